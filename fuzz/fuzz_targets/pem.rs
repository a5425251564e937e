#![no_main]
// Thin libFuzzer wrapper: the target itself is x0x_fuzz::targets::pem, shared
// with the stable-toolchain replay (tests/replay.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| x0x_fuzz::targets::pem(data));
