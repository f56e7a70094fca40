"""Files lbgat reads and writes, safely: atomic writes, the lock of a folder being written, the record of what
lbgat wrote, YAML without tags, telling a tampered pickle from a damaged one, and text made literal for Markdown."""
