//! Patient records (being written).
