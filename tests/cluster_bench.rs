//! Cluster mode (Redis): being written.
