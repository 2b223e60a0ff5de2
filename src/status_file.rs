//! status_file
