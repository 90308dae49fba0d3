import numpy as np


def embedding(ids, weight):
    weight = np.asarray(weight, np.float64)
    out = np.zeros(ids.shape + (weight.shape[1],))
    for n, v in np.ndenumerate(ids):
        out[n] = weight[v]
    return out


def embedding_backward(dout, ids, vocab_size):
    dout = np.asarray(dout, np.float64)
    C = dout.shape[-1]
    dweight = np.zeros((vocab_size, C))
    np.add.at(dweight, ids.reshape(-1), dout.reshape(-1, C))
    return dweight
