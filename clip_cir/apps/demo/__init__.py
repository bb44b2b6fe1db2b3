"""The web demo: a gallery searched by reference image + caption."""
