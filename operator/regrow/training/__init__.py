"""The trainer that training Jobs run: load, split, fit, export ONNX, check parity, profile, gate, publish."""
