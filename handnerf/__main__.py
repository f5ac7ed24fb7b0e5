"""``python -m handnerf``: the ``handnerf`` program (what ``torchrun -m handnerf`` starts)."""

from handnerf.cli import entry

if __name__ == "__main__":
    entry()
