//! A minimal SQL client over an upstream connection, for pgward's own work
//! (loading the demo's sample data, setting up test fixtures). It speaks the
//! simple query protocol and returns text values.

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;

use super::connect::Connected;
use crate::net::backend::ErrorFields;
use crate::net::frame::{FrameError, FrameReader};
use crate::net::stream::Stream;

#[derive(Debug, thiserror::Error)]
pub enum SimpleError {
    #[error("{0}")]
    Database(ErrorFields),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
}

pub struct SimpleClient {
    stream: Stream,
    reader: FrameReader,
}

pub type Row = Vec<Option<String>>;

impl SimpleClient {
    pub fn new(conn: Connected) -> SimpleClient {
        SimpleClient {
            stream: conn.stream,
            reader: FrameReader::with_buffer(conn.buffer),
        }
    }

    /// Runs one or more statements; returns the rows of all of them. The
    /// first error is returned after the server is ready again.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Row>, SimpleError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.stream.write_all(&out).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self.reader.read(&mut self.stream, 1 << 30).await?;
            match frame.tag() {
                b'D' => rows.push(parse_data_row(frame.body())?),
                b'E' => error = Some(ErrorFields::parse(frame.body())),
                b'Z' => break,
                // RowDescription, CommandComplete, notices, parameter changes.
                _ => {}
            }
        }
        match error {
            Some(e) => Err(SimpleError::Database(e)),
            None => Ok(rows),
        }
    }

    /// Sends Terminate and closes.
    pub async fn close(mut self) {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ = self.stream.write_all(&out).await;
        let _ = self.stream.shutdown().await;
    }
}

fn parse_data_row(body: &[u8]) -> Result<Row, SimpleError> {
    let bad = || SimpleError::Protocol("malformed DataRow".into());
    let count = u16::from_be_bytes([
        *body.first().ok_or_else(bad)?,
        *body.get(1).ok_or_else(bad)?,
    ]);
    let mut pos = 2;
    let mut row = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len_bytes = body.get(pos..pos + 4).ok_or_else(bad)?;
        let len = i32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        pos += 4;
        if len < 0 {
            row.push(None);
        } else {
            let value = body.get(pos..pos + len as usize).ok_or_else(bad)?;
            row.push(Some(String::from_utf8_lossy(value).into_owned()));
            pos += len as usize;
        }
    }
    Ok(row)
}
