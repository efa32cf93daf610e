//! A strict check of a request body's chunked framing (RFC 9112 section 7.1),
//! run over the bytes as they are read, before Pingora's own parser sees them.
//!
//! Why: Pingora's parser (httparse's `parse_chunk_size`) accepts a bare LF
//! where the RFC requires CRLF, in a chunk-size line, a chunk extension or
//! the trailer section, and re-frames the body on its way upstream. A front
//! hop that forwards chunked framing as received and reads the bare LF
//! differently would see a different request boundary: a smuggling
//! primitive. Here any line of the framing that does not end in CRLF, and any
//! byte that cannot be part of it, is an error; the proxy answers 400 and
//! closes the connection.

/// Where in the chunked body the next byte falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size; `digits` read so far.
    Size {
        digits: u8,
        size: u64,
    },
    /// After the size: whitespace and `;name=value` extensions.
    Extension {
        size: u64,
    },
    /// The CR of the size line was read; LF must follow.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line or of the final CRLF.
    TrailerStart,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

/// Why the framing was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked framing (a line not ended by CRLF, or a bad chunk size)")]
pub struct FramingError;

#[derive(Debug, Clone)]
pub struct ChunkFraming {
    state: State,
}

impl Default for ChunkFraming {
    fn default() -> Self {
        Self { state: State::Size { digits: 0, size: 0 } }
    }
}

impl ChunkFraming {
    /// True once the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Check the next bytes of the body. When the body ends within them,
    /// returns where (bytes after the end, a pipelined request's, are not
    /// looked at).
    pub fn check(&mut self, bytes: &[u8]) -> Result<Option<usize>, FramingError> {
        if self.is_done() {
            return Ok(Some(0));
        }
        let mut i = 0;
        while i < bytes.len() {
            if let State::Data { left } = self.state {
                let take = left.min((bytes.len() - i) as u64);
                i += take as usize;
                self.state = if take == left { State::DataCr } else { State::Data { left: left - take } };
                continue;
            }
            self.state = next(self.state, bytes[i])?;
            i += 1;
            if self.state == State::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }
}

fn next(state: State, b: u8) -> Result<State, FramingError> {
    Ok(match (state, b) {
        (State::Size { digits, size }, _) if b.is_ascii_hexdigit() => {
            // 16 hex digits hold any u64; more is no real body.
            if digits >= 16 {
                return Err(FramingError);
            }
            let digit = u64::from((b as char).to_digit(16).ok_or(FramingError)?);
            State::Size { digits: digits + 1, size: size << 4 | digit }
        }
        (State::Size { digits, size }, b'\r') if digits > 0 => State::SizeLf { size },
        (State::Size { digits, size }, b';' | b' ' | b'\t') if digits > 0 => State::Extension { size },
        (State::Extension { size }, b'\r') => State::SizeLf { size },
        // Any visible character, space or tab may appear in an extension; not a bare LF.
        (State::Extension { size }, _) if b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80 => {
            State::Extension { size }
        }
        (State::SizeLf { size: 0 }, b'\n') => State::TrailerStart,
        (State::SizeLf { size }, b'\n') => State::Data { left: size },
        (State::DataCr, b'\r') => State::DataLf,
        (State::DataLf, b'\n') => State::Size { digits: 0, size: 0 },
        (State::TrailerStart, b'\r') => State::FinalLf,
        (State::Trailer, b'\r') => State::TrailerLf,
        (State::TrailerStart | State::Trailer, _) if b != b'\n' => State::Trailer,
        (State::TrailerLf, b'\n') => State::TrailerStart,
        (State::FinalLf, b'\n') => State::Done,
        (State::Done, _) => State::Done,
        _ => return Err(FramingError),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_all(body: &[u8]) -> Result<bool, FramingError> {
        let mut f = ChunkFraming::default();
        f.check(body)?;
        Ok(f.is_done())
    }

    #[test]
    fn the_end_of_the_body_is_found_before_a_pipelined_request() {
        let mut f = ChunkFraming::default();
        let bytes = b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        assert_eq!(f.check(bytes), Ok(Some(13)));
        assert_eq!(&bytes[13..16], b"GET");
    }

    /// Every split of `body` into two reads gives the same verdict as one read.
    fn check_split(body: &[u8]) -> Result<bool, FramingError> {
        let whole = check_all(body);
        for at in 0..body.len() {
            let mut f = ChunkFraming::default();
            let split = f.check(&body[..at]).and_then(|_| f.check(&body[at..])).map(|_| f.is_done());
            assert_eq!(split, whole, "split at {at}");
        }
        whole
    }

    #[test]
    fn well_formed_bodies_pass() {
        assert_eq!(check_split(b"3\r\nabc\r\n0\r\n\r\n"), Ok(true));
        assert_eq!(check_split(b"A;name=value\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n"), Ok(true));
        assert_eq!(check_split(b"3 ; e\r\na\nc\r\n0\r\n\r\n"), Ok(true), "an LF inside data is data");
        assert_eq!(check_split(b"3\r\nabc\r\n"), Ok(false), "not finished yet");
    }

    #[test]
    fn a_bare_lf_anywhere_in_the_framing_is_refused() {
        for body in [
            &b"3\nabc\r\n0\r\n\r\n"[..],
            b"3;ext\nabc\r\n0\r\n\r\n",
            b"3\r\nabc\n0\r\n\r\n",
            b"3\r\nabc\r\n0\n\r\n",
            b"3\r\nabc\r\n0\r\nX-T: 1\n\r\n",
            b"3\r\nabc\r\n0\r\n\n",
        ] {
            assert_eq!(check_split(body), Err(FramingError), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn bad_sizes_are_refused() {
        for body in [&b"\r\nabc"[..], b"x\r\n", b"-1\r\n", b"11111111111111111\r\n", b"3\rx"] {
            assert_eq!(check_split(body), Err(FramingError), "{:?}", String::from_utf8_lossy(body));
        }
    }
}
