"""S-KAN: KAN layers whose nodes select among several activation spaces (DESIGN §4)."""
