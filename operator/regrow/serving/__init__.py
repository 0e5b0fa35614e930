"""The inference server that serving pods run: KServe Open Inference Protocol v2 (and v1) over REST."""
