//! PostgreSQL message framing.
//!
//! After startup every message is a type byte, a big-endian `u32` length that
//! counts itself but not the type byte, and a body. A [`Frame`] keeps the whole
//! message (header included) as one `Bytes`, so relaying it is a reference
//! count bump and a write, never a re-encode.
//!
//! [`FrameReader`] is the careful reader used while a connection is being set up
//! (startup, authentication, the upstream handshake). The relay's hot path has
//! its own scanner in `session::relay` that forwards runs of frames in one
//! write and streams huge rows without buffering them whole.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Length of a message header: one type byte and a four-byte length.
pub const HEADER_LEN: usize = 5;

/// One complete protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
}

impl Frame {
    /// Wraps a buffer that holds exactly one message, header included.
    pub fn from_bytes(bytes: Bytes) -> Option<Frame> {
        let header = Header::parse(&bytes)?;
        (header.total_len() == bytes.len()).then_some(Frame { bytes })
    }

    pub fn tag(&self) -> u8 {
        self.bytes[0]
    }

    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

/// A decoded message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// The length field: body plus the four length bytes.
    pub len: u32,
}

impl Header {
    /// Reads a header from the front of `buf`; `None` if fewer than five bytes.
    pub fn parse(buf: &[u8]) -> Option<Header> {
        if buf.len() < HEADER_LEN {
            return None;
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        Some(Header { tag: buf[0], len })
    }

    /// Size of the whole message on the wire.
    pub fn total_len(&self) -> usize {
        self.len as usize + 1
    }

    /// A length below four cannot even cover itself.
    pub fn is_valid(&self) -> bool {
        self.len >= 4
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("invalid message length {0}")]
    InvalidLength(u32),
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads whole frames from a stream, buffering what arrives early.
pub struct FrameReader {
    buf: BytesMut,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    pub fn new() -> Self {
        FrameReader {
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// Continues from bytes another reader had already taken off the socket.
    pub fn with_buffer(buf: BytesMut) -> Self {
        FrameReader { buf }
    }

    /// Reads the next frame, refusing any that is larger than `limit` before
    /// reading its body.
    pub async fn read<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        limit: usize,
    ) -> Result<Frame, FrameError> {
        loop {
            if let Some(header) = Header::parse(&self.buf) {
                if !header.is_valid() {
                    return Err(FrameError::InvalidLength(header.len));
                }
                let total = header.total_len();
                if total > limit {
                    return Err(FrameError::TooLarge { size: total, limit });
                }
                if self.buf.len() >= total {
                    let bytes = self.buf.split_to(total).freeze();
                    return Ok(Frame { bytes });
                }
                self.buf.reserve(total - self.buf.len());
            }
            if io.read_buf(&mut self.buf).await? == 0 {
                return Err(FrameError::Closed);
            }
        }
    }

    /// Hands over whatever has been read but not yet consumed, so the relay
    /// can continue exactly where setup stopped.
    pub fn into_buffer(self) -> BytesMut {
        self.buf
    }
}

/// Reads a NUL-terminated string from the front of `buf`, advancing past it.
pub fn read_cstr(buf: &mut &[u8]) -> Option<Vec<u8>> {
    let end = buf.iter().position(|&b| b == 0)?;
    let s = buf[..end].to_vec();
    buf.advance(end + 1);
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_frames_split_across_reads() {
        let wire: &[u8] = b"Q\0\0\0\x0dselect 1\0Z\0\0\0\x05I";
        let (mut tx, mut rx) = tokio::io::duplex(3);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(wire).await.unwrap();
        });
        let mut reader = FrameReader::new();
        let q = reader.read(&mut rx, 1024).await.unwrap();
        assert_eq!(q.tag(), b'Q');
        assert_eq!(q.body(), b"select 1\0");
        let z = reader.read(&mut rx, 1024).await.unwrap();
        assert_eq!(z.tag(), b'Z');
        assert_eq!(z.body(), b"I");
        writer.await.unwrap();
        assert!(matches!(
            reader.read(&mut rx, 1024).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn refuses_oversized_and_invalid_lengths() {
        let mut big: &[u8] = b"Q\x7f\xff\xff\xff";
        let err = FrameReader::new().read(&mut big, 1 << 20).await;
        assert!(matches!(err, Err(FrameError::TooLarge { .. })));
        let mut tiny: &[u8] = b"Q\0\0\0\x02";
        let err = FrameReader::new().read(&mut tiny, 1 << 20).await;
        assert!(matches!(err, Err(FrameError::InvalidLength(2))));
    }

    #[test]
    fn frame_from_bytes_checks_length() {
        assert!(Frame::from_bytes(Bytes::from_static(b"Z\0\0\0\x05I")).is_some());
        assert!(Frame::from_bytes(Bytes::from_static(b"Z\0\0\0\x05")).is_none());
    }
}
