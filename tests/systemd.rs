//! systemd tests
