//! data tests
