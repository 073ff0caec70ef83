"""The concept set as it comes in: a folder or a batch of images with captions, decoded, resized and checked."""
