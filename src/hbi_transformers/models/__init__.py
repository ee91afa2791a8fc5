"""The models of hbi_transformers, one folder each, as transformers keeps them."""
