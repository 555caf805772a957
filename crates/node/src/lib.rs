//! Sans-IO orchestration of one rempart host (`rempart-node`): which role the host plays for a
//! service, the ordered steps that move the service (promote ⇒ mount ⇒ services ⇒ health ⇒ VIP,
//! and back), and the witness's quorum lease. Work in progress (issue 15).

pub mod config;
pub mod io;
pub mod witness;
