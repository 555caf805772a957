//! Mutual authentication and per-frame integrity of a witness connection (sans-IO).
//!
//! Both ends know a shared secret; neither ever sends it. The handshake is a challenge /
//! response, as on the replication link, with our own labels:
//!
//! ```text
//!  client                                             server
//!    │── Hello{c} ──────────────────────────────────────▶│   c, s: 32 random bytes each,
//!    │◀────────────────────────────────────── Hello{s} ──│   fresh per connection
//!    │── Auth{MAC_k("client" ‖ s ‖ c)} ─────────────────▶│   k = derive_key(secret)
//!    │◀────────────── Auth{MAC_k("server" ‖ c ‖ s)} ─────│
//!    │── Acquire … ‖ tag ───────────────────────────────▶│   tag = MAC_sk(dir ‖ n ‖ frame)[..16]
//!    │◀──────────────────────────── Granted … ‖ tag ─────│   sk = MAC_k("session" ‖ c ‖ s)
//! ```
//!
//! - A peer without the secret cannot answer the challenge: the server answers no request of
//!   an unauthenticated client, and a client trusts no reply of an unauthenticated server (a
//!   fake witness cannot hand out leases).
//! - A recorded handshake replayed on a new connection fails: the other side's challenge is new.
//!   A reflected challenge (our own sent back) is refused, and the labels differ by role, so a
//!   MAC cannot be bounced back either.
//! - Every later frame carries a tag over its bytes, its direction and its position `n` in the
//!   session: a frame injected, altered, replayed or reordered inside a connection fails.
//!
//! The challenges come from the caller (the IO shell draws them from the OS), so tests are
//! deterministic.

use super::wire::{FrameType, Packet, Repr, WireError, TAG_LEN};

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The node (asks for leases).
    Client,
    /// The witness.
    Server,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Client => b"client",
            Role::Server => b"server",
        }
    }
    fn peer(self) -> Role {
        match self {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        }
    }
}

/// Why a connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The peer sent a malformed frame.
    #[error("malformed frame: {0}")]
    Wire(#[from] WireError),
    /// The peer's answer to our challenge is wrong: it does not know the shared secret.
    #[error("authentication failed: the peer does not know the shared secret (the secret files differ)")]
    BadMac,
    /// The peer sent our own challenge back.
    #[error("authentication failed: the peer reflected our challenge")]
    Reflected,
    /// The peer broke the handshake's order (a request before authentication, a second hello).
    #[error("protocol violation: {0:?} frame out of order")]
    OutOfOrder(FrameType),
    /// A frame after the handshake has a wrong tag: altered, injected or replayed.
    #[error("a frame's integrity tag is wrong (altered, injected or replayed frame)")]
    BadTag,
    /// Caller misuse: a message sealed before the session was established.
    #[error("the session is not established yet")]
    NotEstablished,
}

/// What a received frame means.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Incoming {
    /// A handshake frame to send back (our answer to the peer's challenge).
    Send(Vec<u8>),
    /// The peer proved it knows the secret: the session is established.
    Established,
    /// An authenticated message.
    Message(Repr),
}

/// Derives the authentication key from the shared secret (as read from the secret file).
#[must_use]
pub fn auth_key(secret: &[u8]) -> [u8; 32] {
    blake3::derive_key("rempart-witness v1 authentication", secret)
}

fn mac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    for p in parts {
        h.update(p);
    }
    *h.finalize().as_bytes()
}

/// Compares without an early exit (the time taken does not tell how many bytes matched).
fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One end of one connection.
#[derive(Debug)]
pub struct Session {
    role: Role,
    key: [u8; 32],
    mine: [u8; 32],
    theirs: Option<[u8; 32]>,
    session_key: Option<[u8; 32]>,
    tx: u64,
    rx: u64,
}

impl Session {
    /// A new connection's end: `challenge` must be fresh random bytes.
    #[must_use]
    pub fn new(role: Role, key: [u8; 32], challenge: [u8; 32]) -> Session {
        Session { role, key, mine: challenge, theirs: None, session_key: None, tx: 0, rx: 0 }
    }

    /// The first frame to send, as soon as the connection is up.
    #[must_use]
    pub fn hello(&self) -> Vec<u8> {
        Repr::Hello { challenge: self.mine }.to_vec()
    }

    /// Whether the peer has proved it knows the secret.
    #[must_use]
    pub fn is_established(&self) -> bool {
        self.session_key.is_some()
    }

    /// Handles one whole frame from the peer. Any error means: close the connection.
    pub fn receive(&mut self, frame: &[u8]) -> Result<Incoming, AuthError> {
        let p = Packet::new_checked(frame)?;
        let repr = Repr::parse(&p)?;
        let Some(sk) = self.session_key else {
            return match repr {
                Repr::Hello { challenge } => {
                    if self.theirs.is_some() {
                        return Err(AuthError::OutOfOrder(FrameType::Hello));
                    }
                    if constant_eq(&challenge, &self.mine) {
                        return Err(AuthError::Reflected);
                    }
                    self.theirs = Some(challenge);
                    let m = mac(&self.key, &[self.role.label(), &challenge[..], &self.mine[..]]);
                    Ok(Incoming::Send(Repr::Auth { mac: m }.to_vec()))
                }
                Repr::Auth { mac: got } => {
                    let Some(theirs) = self.theirs else {
                        return Err(AuthError::OutOfOrder(FrameType::Auth));
                    };
                    let want = mac(&self.key, &[self.role.peer().label(), &self.mine[..], &theirs[..]]);
                    if !constant_eq(&want, &got) {
                        return Err(AuthError::BadMac);
                    }
                    let (c, s) = match self.role {
                        Role::Client => (self.mine, theirs),
                        Role::Server => (theirs, self.mine),
                    };
                    self.session_key = Some(mac(&self.key, &[&b"session"[..], &c[..], &s[..]]));
                    Ok(Incoming::Established)
                }
                other => Err(AuthError::OutOfOrder(other.frame_type())),
            };
        };
        if !repr.frame_type().tagged() {
            return Err(AuthError::OutOfOrder(repr.frame_type()));
        }
        let want = tag(&sk, self.role.peer(), self.rx, p.authenticated());
        if !constant_eq(&want, p.tag()) {
            return Err(AuthError::BadTag);
        }
        self.rx += 1;
        Ok(Incoming::Message(repr))
    }

    /// Encodes `m` with its tag, for sending. Only after [`Session::is_established`].
    pub fn seal(&mut self, m: &Repr) -> Result<Vec<u8>, AuthError> {
        let Some(sk) = self.session_key else {
            return Err(AuthError::NotEstablished);
        };
        if !m.frame_type().tagged() {
            return Err(AuthError::OutOfOrder(m.frame_type()));
        }
        let mut v = m.to_vec();
        let mut p = Packet::new_unchecked(&mut v[..]);
        let t = tag(&sk, self.role, self.tx, p.authenticated());
        p.tag_mut().copy_from_slice(&t);
        self.tx += 1;
        Ok(v)
    }
}

fn tag(sk: &[u8; 32], sender: Role, n: u64, bytes: &[u8]) -> [u8; TAG_LEN] {
    let full = mac(sk, &[sender.label(), &n.to_be_bytes()[..], bytes]);
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(&full[..TAG_LEN]);
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::witness::wire::RequestKind;

    fn pair(client_secret: &[u8], server_secret: &[u8]) -> (Session, Session) {
        (
            Session::new(Role::Client, auth_key(client_secret), [1; 32]),
            Session::new(Role::Server, auth_key(server_secret), [2; 32]),
        )
    }

    fn send(frame: Incoming) -> Vec<u8> {
        match frame {
            Incoming::Send(v) => v,
            other => panic!("expected a frame to send, got {other:?}"),
        }
    }

    /// Runs the handshake; returns what each side said about the other's Auth.
    fn handshake(c: &mut Session, s: &mut Session) -> (Result<Incoming, AuthError>, Result<Incoming, AuthError>) {
        let c_auth = send(s.receive(&c.hello()).unwrap());
        let s_auth = send(c.receive(&s.hello()).unwrap());
        (c.receive(&c_auth), s.receive(&s_auth))
    }

    fn acquire() -> Repr {
        Repr::Request { kind: RequestKind::Acquire, seq: 1, ttl_ms: 3000, resource: "r0".into(), node: "main".into() }
    }

    #[test]
    fn same_secret_establishes_and_messages_flow_both_ways() {
        let (mut c, mut s) = pair(b"secret", b"secret");
        assert!(c.seal(&acquire()).is_err(), "nothing is sealed before the handshake");
        let (a, b) = handshake(&mut c, &mut s);
        assert_eq!((a, b), (Ok(Incoming::Established), Ok(Incoming::Established)));
        for _ in 0..3 {
            let f = c.seal(&acquire()).unwrap();
            assert_eq!(s.receive(&f), Ok(Incoming::Message(acquire())));
            let g = s.seal(&Repr::Granted { seq: 1, ttl_ms: 3000 }).unwrap();
            assert_eq!(c.receive(&g), Ok(Incoming::Message(Repr::Granted { seq: 1, ttl_ms: 3000 })));
        }
    }

    #[test]
    fn a_wrong_secret_is_refused_by_both_ends() {
        let (mut c, mut s) = pair(b"secret", b"other");
        let (a, b) = handshake(&mut c, &mut s);
        assert_eq!(a, Err(AuthError::BadMac));
        assert_eq!(b, Err(AuthError::BadMac));
        assert!(!s.is_established() && !c.is_established());
    }

    #[test]
    fn a_request_before_authentication_is_refused() {
        let (c, mut s) = pair(b"k", b"k");
        let _ = send(s.receive(&c.hello()).unwrap());
        // An attacker cannot seal, so a zero tag is what it has: refused for order anyway.
        assert_eq!(s.receive(&acquire().to_vec()), Err(AuthError::OutOfOrder(super::super::wire::FrameType::Acquire)));
        let _ = c;
    }

    #[test]
    fn a_replayed_handshake_fails_on_a_new_connection() {
        let (mut c, mut s) = pair(b"k", b"k");
        let c_hello = c.hello();
        let _s_auth = send(s.receive(&c_hello).unwrap());
        let c_auth = send(c.receive(&s.hello()).unwrap());
        assert_eq!(s.receive(&c_auth), Ok(Incoming::Established));
        // The recorded client frames, replayed to a server with a fresh challenge.
        let mut s2 = Session::new(Role::Server, auth_key(b"k"), [3; 32]);
        let _ = send(s2.receive(&c_hello).unwrap());
        assert_eq!(s2.receive(&c_auth), Err(AuthError::BadMac));
    }

    #[test]
    fn reflection_and_repeats_are_refused() {
        let mut s = Session::new(Role::Server, auth_key(b"k"), [2; 32]);
        assert_eq!(s.receive(&s.hello()), Err(AuthError::Reflected));
        let mut s = Session::new(Role::Server, auth_key(b"k"), [2; 32]);
        let c = Session::new(Role::Client, auth_key(b"k"), [1; 32]);
        let our_auth = send(s.receive(&c.hello()).unwrap());
        assert_eq!(s.receive(&c.hello()), Err(AuthError::OutOfOrder(super::super::wire::FrameType::Hello)));
        // The server's own answer bounced back is not the client's answer.
        let mut s = Session::new(Role::Server, auth_key(b"k"), [2; 32]);
        let _ = send(s.receive(&c.hello()).unwrap());
        assert_eq!(s.receive(&our_auth), Err(AuthError::BadMac));
    }

    #[test]
    fn altered_replayed_or_reordered_frames_fail_their_tag() {
        let (mut c, mut s) = pair(b"k", b"k");
        let _ = handshake(&mut c, &mut s);
        let f1 = c.seal(&acquire()).unwrap();
        let f2 = c.seal(&acquire()).unwrap();
        let mut altered = f1.clone();
        altered[19] ^= 1; // ttl
        assert_eq!(s.clone_for_test().receive(&altered), Err(AuthError::BadTag));
        assert_eq!(s.clone_for_test().receive(&f2), Err(AuthError::BadTag), "out of order");
        assert!(s.receive(&f1).is_ok());
        assert_eq!(s.clone_for_test().receive(&f1), Err(AuthError::BadTag), "replayed");
        assert!(s.receive(&f2).is_ok());
        // A frame sealed by the server does not pass as the client's.
        let g = s.seal(&acquire()).unwrap();
        assert_eq!(s.receive(&g), Err(AuthError::BadTag));
    }

    impl Session {
        fn clone_for_test(&self) -> Session {
            Session {
                role: self.role,
                key: self.key,
                mine: self.mine,
                theirs: self.theirs,
                session_key: self.session_key,
                tx: self.tx,
                rx: self.rx,
            }
        }
    }
}
