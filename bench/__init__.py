"""``make bench``: the pipeline against the naive script and the machine's limit.

Not part of the product (not installed); run from the repository root.
"""
