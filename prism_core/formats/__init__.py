"""The files the pack writes and reads: token banks, LoRA files and their headers, what resuming checks, and
output names made safe; safetensors only, written atomically and never over another file."""
