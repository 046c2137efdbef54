"""The XDP data path: kernel headers, the compile child, libbpf bindings and the loaded program."""
