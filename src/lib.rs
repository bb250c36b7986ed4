//! Placeholder library target: this package only carries the cross-crate tests in `tests/`.
