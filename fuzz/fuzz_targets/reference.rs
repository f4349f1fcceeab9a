#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| defectflow::tools::fuzzing::reference(data));
