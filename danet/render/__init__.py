"""Pictures of results: numpy overlays (``overlays``) and matplotlib figures without pyplot (``figures``)."""
