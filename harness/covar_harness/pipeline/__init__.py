"""The pipeline contract every analysis step implements: the pair context, the batch, typed records, Step."""
