"""``python -m danet.weights`` prints the shipped model's card as the README shows it."""
from danet.weights import default_card

print(default_card().markdown())
