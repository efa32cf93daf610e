//! A chunked answer body decoded as Pingora's client decodes one
//! (`pingora-core`'s `BodyReader`), for the answers the lean path reads
//! itself (`upstream.rs`): the chunk sizes by httparse's
//! `parse_chunk_size` (extensions skipped, at most 8 KiB of size line),
//! exactly CR LF after each chunk's data, and after the last chunk any
//! trailer lines (dropped, at most 64 KiB), each ended by CR LF, then an
//! empty line. Whatever Pingora refuses is refused here with its error
//! type, so the client sees the same: the pieces sent so far, then the
//! connection closed without the last chunk.
//!
//! The decoder is fed the bytes read and hands back the data found in
//! them; it reads nothing itself, so it is tested on every way the bytes
//! can be split.

use pingora_error::{Error, ErrorType};

/// Pingora's error types for a malformed chunked body.
pub(super) const INVALID_CHUNK: ErrorType = ErrorType::new("InvalidChunk");
pub(super) const INVALID_TRAILER_END: ErrorType = ErrorType::new("InvalidTrailerEnd");
/// As Pingora's reader: the longest size line (with extensions), and the
/// most trailer bytes, it waits for.
const SIZE_LINE_LIMIT: usize = 8 * 1024;
const TRAILERS_LIMIT: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At a chunk's size line.
    Size,
    /// In a chunk's data: this many bytes to go.
    Data(u64),
    /// After a chunk's data: this many bytes of its CR LF seen.
    DataEnd(u8),
    /// After the last chunk's size line: this many bytes of the closing
    /// CR LF CR LF seen (the size line's own CR LF counts as the first two;
    /// a trailer line starts over at 0), and the trailer bytes so far.
    Trailers(u8, usize),
    Done,
}

/// What one call of [`Decoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// Chunk data at `start..end` of the bytes given; the bytes before
    /// `end` are used up.
    Data { start: usize, end: usize },
    /// Everything given is used up (or kept for later: see `consumed`); more is needed.
    More { consumed: usize },
    /// The body ended after this many of the bytes given; any after it were
    /// not asked for.
    End { consumed: usize },
}

pub(super) struct Decoder {
    state: State,
}

impl Decoder {
    pub(super) fn new() -> Self {
        Self { state: State::Size }
    }

    /// Decode from the start of `bytes` (the unused rest of what was read).
    pub(super) fn decode(&mut self, bytes: &[u8]) -> Result<Found, Box<Error>> {
        let mut at = 0;
        loop {
            match self.state {
                State::Done => return Ok(Found::End { consumed: at }),
                State::Size => match httparse::parse_chunk_size(&bytes[at..]) {
                    Ok(httparse::Status::Complete((line, 0))) => {
                        at += line;
                        // The size line's CR LF is the first half of the end.
                        self.state = State::Trailers(2, 0);
                    }
                    Ok(httparse::Status::Complete((line, size))) => {
                        at += line;
                        self.state = State::Data(size);
                    }
                    Ok(httparse::Status::Partial) => {
                        if bytes.len() - at > SIZE_LINE_LIMIT {
                            return Err(Error::explain(INVALID_CHUNK, "Chunk ext over limit"));
                        }
                        // The partial size line is kept for the next call.
                        return Ok(Found::More { consumed: at });
                    }
                    Err(e) => {
                        return Err(Error::explain(INVALID_CHUNK, format!("Invalid chunked encoding: {e:?}")));
                    }
                },
                State::Data(left) => {
                    let available = bytes.len() - at;
                    if available == 0 {
                        return Ok(Found::More { consumed: at });
                    }
                    let take = usize::try_from(left).map_or(available, |left| left.min(available));
                    let left = left - take as u64;
                    self.state = if left == 0 { State::DataEnd(0) } else { State::Data(left) };
                    if left == 0 {
                        // As Pingora: the CR LF after the data, as much of it as
                        // came, is checked before the data is handed on.
                        let after = &bytes[at + take..];
                        if !matches!(after, [] | [b'\r'] | [b'\r', b'\n', ..]) {
                            let what = format!("Invalid chunked encoding: {} was not CRLF", after.escape_ascii());
                            return Err(Error::explain(INVALID_CHUNK, what));
                        }
                    }
                    return Ok(Found::Data { start: at, end: at + take });
                }
                State::DataEnd(seen) => {
                    let Some(&byte) = bytes.get(at) else { return Ok(Found::More { consumed: at }) };
                    let expected = if seen == 0 { b'\r' } else { b'\n' };
                    if byte != expected {
                        let what = format!("Invalid chunked encoding: {} was not CRLF", byte.escape_ascii());
                        return Err(Error::explain(INVALID_CHUNK, what));
                    }
                    at += 1;
                    self.state = if seen == 0 { State::DataEnd(1) } else { State::Size };
                }
                State::Trailers(seen, trailer_bytes) => {
                    let Some(&byte) = bytes.get(at) else { return Ok(Found::More { consumed: at }) };
                    at += 1;
                    self.state = match (seen % 2, byte) {
                        (0, b'\r') => State::Trailers(seen + 1, trailer_bytes),
                        (1, b'\n') if seen == 3 => State::Done,
                        (1, b'\n') => State::Trailers(seen + 1, trailer_bytes),
                        // A trailer line's text: the end starts over. Counted as
                        // Pingora counts it: the text, and the CR LF before a line.
                        (0, byte) if byte != b'\n' => {
                            let trailer_bytes = trailer_bytes + if seen == 2 { 3 } else { 1 };
                            if trailer_bytes > TRAILERS_LIMIT {
                                return Err(Error::explain(INVALID_TRAILER_END, "Trailer size over limit"));
                            }
                            State::Trailers(0, trailer_bytes)
                        }
                        (_, byte) => {
                            let what = format!("Invalid chunked encoding: {} was not CRLF", byte.escape_ascii());
                            return Err(Error::explain(INVALID_TRAILER_END, what));
                        }
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data of `body` fed in pieces split at `splits`, and whether it
    /// ended, and after how many bytes; or the error's type.
    fn decode_split(body: &[u8], splits: &[usize]) -> Result<(Vec<u8>, Option<usize>), ErrorType> {
        let mut decoder = Decoder::new();
        let mut data = Vec::new();
        // As the relay: unused bytes are kept and more appended.
        let mut pending: Vec<u8> = Vec::new();
        let mut fed = 0;
        let mut cuts = splits.iter().copied().chain(std::iter::once(body.len())).peekable();
        while let Some(cut) = cuts.next() {
            pending.extend_from_slice(&body[fed..cut.max(fed)]);
            fed = cut.max(fed);
            loop {
                match decoder.decode(&pending).map_err(|e| e.etype().clone())? {
                    Found::Data { start, end } => {
                        data.extend_from_slice(&pending[start..end]);
                        pending.drain(..end);
                    }
                    Found::More { consumed } => {
                        pending.drain(..consumed);
                        break;
                    }
                    Found::End { consumed } => return Ok((data, Some(fed - pending.len() + consumed))),
                }
            }
            if cuts.peek().is_none() {
                break;
            }
        }
        Ok((data, None))
    }

    #[test]
    fn chunks_decode_the_same_however_the_bytes_are_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 1\r\n\r\nNEXT";
        let whole = decode_split(body, &[]).expect("valid");
        assert_eq!(whole, (b"hello world".to_vec(), Some(body.len() - 4)));
        for a in 0..body.len() {
            for b in a..body.len() {
                assert_eq!(decode_split(body, &[a, b]).expect("valid"), whole, "split at {a} and {b}");
            }
        }
    }

    #[test]
    fn bodies_pingora_accepts_are_accepted() {
        let ok =
            |body: &[u8]| decode_split(body, &[]).map(|(data, end)| (String::from_utf8_lossy(&data).into_owned(), end));
        assert_eq!(ok(b"0\r\n\r\n"), Ok((String::new(), Some(5))));
        assert_eq!(ok(b"3\r\nabc\r\n0\r\n\r\n"), Ok(("abc".into(), Some(13))));
        // Upper-case hex, extensions, a trailer section of two lines.
        assert_eq!(ok(b"A;x=\"y\"\r\n0123456789\r\n0\r\na: 1\r\nb: 2\r\n\r\n"), Ok(("0123456789".into(), Some(38))));
        // Not over yet.
        assert_eq!(ok(b"3\r\nabc\r\n0\r\n"), Ok(("abc".into(), None)));
        assert_eq!(ok(b"3\r\nab"), Ok(("ab".into(), None)));
    }

    #[test]
    fn data_is_not_handed_on_before_a_bad_end_that_came_with_it() {
        let mut decoder = Decoder::new();
        assert_eq!(decoder.decode(b"2\r\nokX").map_err(|e| e.etype().clone()), Err(INVALID_CHUNK));
        let mut decoder = Decoder::new();
        assert_eq!(decoder.decode(b"2\r\nok\r").expect("valid so far"), Found::Data { start: 3, end: 5 });
    }

    #[test]
    fn bodies_pingora_refuses_are_refused_with_its_errors() {
        for (body, etype) in [
            (&b"zz\r\nok\r\n0\r\n\r\n"[..], INVALID_CHUNK),
            (b"2\r\nokX\r\n0\r\n\r\n", INVALID_CHUNK),
            (b"2\r\nok\r\n2\r\nokX", INVALID_CHUNK),
            (b"2\r\nok\rX0\r\n\r\n", INVALID_CHUNK),
            (b"2\r\nok\n0\r\n\r\n", INVALID_CHUNK),
            (b"0\r\n\n", INVALID_TRAILER_END),
            (b"0\r\nx: 1\n\r\n", INVALID_TRAILER_END),
            (b"0\r\nx: 1\r\r\n", INVALID_TRAILER_END),
        ] {
            assert_eq!(decode_split(body, &[]), Err(etype.clone()), "{:?}", body.escape_ascii().to_string());
        }
        let long_size_line = [b"1;".as_slice(), &[b'x'; SIZE_LINE_LIMIT + 1]].concat();
        assert_eq!(decode_split(&long_size_line, &[]), Err(INVALID_CHUNK));
        let long_trailers = [b"0\r\nx: ".as_slice(), &[b'y'; TRAILERS_LIMIT + 1]].concat();
        assert_eq!(decode_split(&long_trailers, &[]), Err(INVALID_TRAILER_END));
    }
}
