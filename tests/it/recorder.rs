//! A lenient SMTP server for the smuggling tests: it takes a bare LF or a
//! bare CR as a line end (as some real servers do), and records every DATA
//! stream byte for byte. A message that could smuggle would end its DATA
//! early here and start a second transaction. This is fault injection (the
//! one kind of server the real sink is not); normal sending is tested
//! against Postfix.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// One mail transaction as the server saw it.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The DATA stream as received, up to and including the final `.` line.
    pub data: Vec<u8>,
}

pub struct Recorder {
    pub port: u16,
    transactions: Arc<Mutex<Vec<Transaction>>>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let transactions = Arc::new(Mutex::new(Vec::new()));
        let log = transactions.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = session(stream, &log);
                });
            }
        });
        Recorder { port, transactions }
    }

    pub fn transactions(&self) -> Vec<Transaction> {
        self.transactions.lock().unwrap().clone()
    }
}

/// The next line, ended by CRLF, LF or a lone CR; the terminator is kept.
fn lenient_line(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        let byte = buf[0];
        reader.consume(1);
        line.push(byte);
        match byte {
            b'\n' => return Ok(Some(line)),
            b'\r' => {
                if reader.fill_buf()?.first() == Some(&b'\n') {
                    reader.consume(1);
                    line.push(b'\n');
                }
                return Ok(Some(line));
            }
            _ => {}
        }
    }
}

fn text(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .trim_end_matches(['\r', '\n'])
        .to_string()
}

fn session(stream: TcpStream, log: &Mutex<Vec<Transaction>>) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    out.write_all(b"220 recorder ESMTP\r\n")?;
    let mut current: Option<Transaction> = None;
    while let Some(line) = lenient_line(&mut reader)? {
        let command = text(&line);
        let upper = command.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-recorder\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            b"250 ok\r\n"
        } else if upper.starts_with("AUTH LOGIN") {
            out.write_all(b"334 VXNlcm5hbWU6\r\n")?;
            lenient_line(&mut reader)?;
            out.write_all(b"334 UGFzc3dvcmQ6\r\n")?;
            lenient_line(&mut reader)?;
            b"235 ok\r\n"
        } else if upper.starts_with("AUTH") {
            b"235 ok\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            current = Some(Transaction {
                mail_from: command[10..].trim().to_string(),
                rcpt_to: Vec::new(),
                data: Vec::new(),
            });
            b"250 ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            match current.as_mut() {
                Some(t) => {
                    t.rcpt_to.push(command[8..].trim().to_string());
                    b"250 ok\r\n"
                }
                None => b"503 MAIL first\r\n",
            }
        } else if upper == "DATA" {
            let Some(mut t) = current.take() else {
                out.write_all(b"503 MAIL first\r\n")?;
                continue;
            };
            out.write_all(b"354 go on\r\n")?;
            while let Some(line) = lenient_line(&mut reader)? {
                t.data.extend_from_slice(&line);
                if text(&line) == "." {
                    break;
                }
            }
            log.lock().unwrap().push(t);
            b"250 queued\r\n"
        } else if upper == "RSET" {
            current = None;
            b"250 ok\r\n"
        } else if upper == "QUIT" {
            out.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else {
            b"502 5.5.2 what?\r\n"
        };
        out.write_all(reply)?;
    }
    Ok(())
}

/// Why `data` is not CRLF-only: the first bare CR or LF.
pub fn bare_line_end(data: &[u8]) -> Option<usize> {
    data.iter().enumerate().position(|(i, &b)| match b {
        b'\r' => data.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || data[i - 1] != b'\r',
        _ => false,
    })
}
