"""The Hugging Face hub: model cards (template as package data) and the folder that is pushed."""
