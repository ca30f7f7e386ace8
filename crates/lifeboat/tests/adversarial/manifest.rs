//! Adversarial tests: manifest.
