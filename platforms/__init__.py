"""FPGA platforms and open synthesis / place-and-route flows."""
