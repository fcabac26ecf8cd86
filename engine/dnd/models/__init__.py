"""Target models (torchvision, timm, Hugging Face, python:module:callable) and layer hooks."""
