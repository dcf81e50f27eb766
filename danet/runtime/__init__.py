"""Where the library runs: the one device rule and running under torchrun."""
