//! The `int8kit` binary end to end, as a user runs it: one test binary with a module per subject (one link,
//! one process start for the lot), on the fixtures and on hostile inputs made from them.

mod common;

mod bounds;
mod cli;
mod fuzz;
mod gate;
mod inputs;
mod install;
mod lint;
mod outputs;
mod rounding;
mod scales;
mod shards;
mod sizes;
mod tensors;
mod validate;
mod zoo;
