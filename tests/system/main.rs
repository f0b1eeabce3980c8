//! Whole-system tests: a real `fluxplane dev` child process on ephemeral ports, driven through
//! the real `fluxctl` binary and the gateway over HTTP.

mod util;

mod spine;
