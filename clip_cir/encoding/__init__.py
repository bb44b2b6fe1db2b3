"""Images and captions to features, computed once (feature and pixel caches), and nearest-neighbour search over them."""
