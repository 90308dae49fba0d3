"""llama2.c's files read and run as its ``run.c`` does, in NumPy float64: the reference for ``qorus export
--format llama2c``. Written from run.c's layout and loops alone (no qorus code): the legacy version 0
checkpoint (seven int32, a negative vocab_size for a classifier stored apart, the weights in run.c's order,
the two RoPE tables, then the classifier) and ``tokenizer.bin`` (int32 max_token_length, then per token a
float32 score, an int32 length and the bytes)."""

import struct

import numpy as np

HEADER = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")


def read_checkpoint(path):
    """``(config dict, weights dict)`` of a version 0 ``model.bin``; the whole file must be used."""
    data = open(path, "rb").read()
    cfg = dict(zip(HEADER, struct.unpack_from("<7i", data), strict=True))
    cfg["shared"] = cfg["vocab_size"] > 0
    cfg["vocab_size"] = abs(cfg["vocab_size"])
    f = np.frombuffer(data, "<f4", offset=28).astype(np.float64)
    dim, hid, nl, v = cfg["dim"], cfg["hidden_dim"], cfg["n_layers"], cfg["vocab_size"]
    head = dim // cfg["n_heads"]
    kv = head * cfg["n_kv_heads"]
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        out = f[pos:pos + n].reshape(shape)
        pos += n
        return out

    w = {"emb": take(v, dim), "att_norm": take(nl, dim), "wq": take(nl, dim, dim), "wk": take(nl, kv, dim),
         "wv": take(nl, kv, dim), "wo": take(nl, dim, dim), "ffn_norm": take(nl, dim), "w1": take(nl, hid, dim),
         "w2": take(nl, dim, hid), "w3": take(nl, hid, dim), "norm": take(dim)}
    take(cfg["seq_len"] * head // 2)  # freq_cis_real, unused by run.c's newer loop
    take(cfg["seq_len"] * head // 2)  # freq_cis_imag
    w["cls"] = w["emb"] if cfg["shared"] else take(v, dim)
    assert pos == f.size, f"{path}: {f.size - pos} floats left over"
    return cfg, w


def _rmsnorm(x, weight):
    return weight * (x / np.sqrt(np.mean(x * x) + 1e-5))


def _rope(vec, pos, head):
    """run.c's rotation of consecutive pairs (i, i+1), frequency by the pair's place in its head."""
    out = vec.copy()
    for i in range(0, vec.size, 2):
        freq = 1.0 / 10000.0 ** ((i % head) / head)
        c, s = np.cos(pos * freq), np.sin(pos * freq)
        out[i], out[i + 1] = vec[i] * c - vec[i + 1] * s, vec[i] * s + vec[i + 1] * c
    return out


def forward(cfg, w, tokens):
    """``(len(tokens), vocab_size)`` logits of ``tokens`` fed one position at a time, as run.c's transformer()."""
    dim, nh, nkv = cfg["dim"], cfg["n_heads"], cfg["n_kv_heads"]
    head = dim // nh
    keys = [[] for _ in range(cfg["n_layers"])]
    values = [[] for _ in range(cfg["n_layers"])]
    logits = []
    for pos, tok in enumerate(tokens):
        x = w["emb"][tok].copy()
        for layer in range(cfg["n_layers"]):
            xb = _rmsnorm(x, w["att_norm"][layer])
            q = _rope(w["wq"][layer] @ xb, pos, head)
            keys[layer].append(_rope(w["wk"][layer] @ xb, pos, head))
            values[layer].append(w["wv"][layer] @ xb)
            k, v = np.array(keys[layer]), np.array(values[layer])
            att = np.zeros(dim)
            for h in range(nh):
                g = h // (nh // nkv)
                s = k[:, g * head:(g + 1) * head] @ q[h * head:(h + 1) * head] / np.sqrt(head)
                p = np.exp(s - s.max())
                att[h * head:(h + 1) * head] = (p / p.sum()) @ v[:, g * head:(g + 1) * head]
            x = x + w["wo"][layer] @ att
            xb = _rmsnorm(x, w["ffn_norm"][layer])
            h1, h3 = w["w1"][layer] @ xb, w["w3"][layer] @ xb
            x = x + w["w2"][layer] @ (h1 / (1.0 + np.exp(-h1)) * h3)
        logits.append(w["cls"] @ _rmsnorm(x, w["norm"]))
    return np.array(logits)


def greedy(cfg, w, prompt, n):
    """``n`` ids after ``prompt``, each the argmax of the logits (recomputed from scratch: slow, small models)."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(forward(cfg, w, ids)[-1])))
    return ids[len(prompt):]


def read_tokenizer(path, vocab_size):
    """``(pieces as bytes, scores)`` of ``vocab_size`` tokens; the whole file must be used."""
    data = open(path, "rb").read()
    pos, pieces, scores = 4, [], []
    for _ in range(vocab_size):
        score, n = struct.unpack_from("<fi", data, pos)
        pieces.append(data[pos + 8:pos + 8 + n])
        scores.append(score)
        pos += 8 + n
    assert pos == len(data), f"{path}: {len(data) - pos} bytes left over"
    return pieces, scores


def encode(pieces, scores, text):
    """run.c's bpe_encode: a " " first (non-empty text), each UTF-8 character's piece or its bytes as
    id byte+3, then merge the pair whose concatenation is the piece of highest score (the leftmost on ties)
    until none is a piece. The BOS is not included."""
    first = {}
    for i, p in enumerate(pieces):
        first.setdefault(p, i)
    ids = [first[b" "]] if text else []
    for ch in text:
        b = ch.encode("utf-8")
        ids += [first[b]] if b in first else [x + 3 for x in b]
    while True:
        best, at = None, -1
        for i in range(len(ids) - 1):
            j = first.get(pieces[ids[i]] + pieces[ids[i + 1]])
            if j is not None and scores[j] > -1e10 and (best is None or scores[j] > scores[best]):
                best, at = j, i
        if best is None:
            return ids
        ids[at:at + 2] = [best]


def decode(pieces, ids, prev=1):
    """What run.c prints for ``ids`` after the token ``prev``: the piece after a BOS (1) loses a leading space,
    a ``<0xXX>`` piece is its byte."""
    out = b""
    for i in ids:
        p = pieces[i]
        if prev == 1 and p[:1] == b" ":
            p = p[1:]
        if len(p) == 6 and p[:3] == b"<0x" and p[5:] == b">":
            p = bytes([int(p[3:5], 16)])
        out += p
        prev = i
    return out
