//! The subcommands of `socket-node` other than `run`, by what they need: [`operator`] a
//! running socket, [`offline`] only its data dir.

pub(crate) mod offline;
pub(crate) mod operator;
