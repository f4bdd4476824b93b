//! Generated protobuf messages (see `build.rs` and `proto/`).
#![allow(clippy::all, missing_docs, unused_imports)]

include!(concat!(env!("OUT_DIR"), "/protos/mod.rs"));
