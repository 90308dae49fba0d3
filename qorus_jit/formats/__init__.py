"""File formats, read and written without models: safetensors, Hugging Face folders, llama2.c files and
training checkpoints."""
