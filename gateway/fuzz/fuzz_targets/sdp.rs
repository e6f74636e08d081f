#![no_main]
//! See gateway/src/fuzz_entry for what this target drives and checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzz_entry::sdp(data));
