//! The fork request socket: a `SOCK_SEQPACKET` Unix socket pair, so each request is one
//! message (no framing) and the worker's descriptors ride with it (`SCM_RIGHTS`).
//!
//! Hand-written over libc: one `sendmsg` with a control message and one `recv`. A
//! crate for it (nix, rustix's `net`, sendfd) would add a dependency for these few
//! lines, and tokio's `UnixStream` sends no ancillary data.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;

/// The pool's end.
pub(crate) struct ForkSocket {
    fd: AsyncFd<OwnedFd>,
}

/// Largest reply the template sends (a pid or an error message).
pub(crate) const MAX_REPLY: usize = 64 * 1024;

/// A connected pair: the pool's end (non-blocking, registered with tokio) and the end
/// the fork server inherits (blocking, close-on-exec until it is placed).
pub(crate) fn pair() -> io::Result<(ForkSocket, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into the array we pass.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(ours.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(ours.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: an OwnedFd stays open, on the same descriptor, for as long as the
    // AsyncFd owns it.
    let fd = unsafe { AsyncFd::register(ours) }.map_err(|e| e.into_parts().1)?;
    Ok((ForkSocket { fd }, theirs))
}

impl ForkSocket {
    /// Send one message with `fds` attached (the receiver gets its own copies).
    pub async fn send(&self, message: &[u8], fds: &[RawFd]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|inner| send_with_fds(inner.as_raw_fd(), message, fds)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Receive one message (an empty one: the other end closed).
    pub async fn recv(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; MAX_REPLY];
        loop {
            let mut guard = self.fd.readable().await?;
            let got = guard.try_io(|inner| recv_into(inner.as_raw_fd(), &mut buf));
            match got {
                Ok(Ok(n)) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// A message already in the socket, read now whatever the reactor has seen of
    /// it; `None` when there is none.
    pub fn try_recv(&self) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; MAX_REPLY];
        match recv_into(self.fd.as_raw_fd(), &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Ok(Some(buf))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// One non-blocking `recv` into `buf`: the bytes read.
fn recv_into(sock: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv writes at most buf.len() bytes into buf.
    let n = unsafe { libc::recv(sock, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn send_with_fds(sock: RawFd, message: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: message.as_ptr() as *mut libc::c_void,
        iov_len: message.len(),
    };
    let payload = std::mem::size_of_val(fds) as libc::c_uint;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    // u64s, so the control buffer is aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    if !fds.is_empty() {
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = space as _;
        // SAFETY: the control buffer is `space` bytes, room for one header carrying
        // `payload` bytes (CMSG_SPACE), so CMSG_FIRSTHDR is non-null and CMSG_DATA has
        // room for the descriptors.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&header);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                payload as usize,
            );
        }
    }
    // SAFETY: every pointer in `header` points at live buffers of the stated sizes.
    let sent = unsafe { libc::sendmsg(sock, &header, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != message.len() {
        return Err(io::Error::other("the fork request went out in part"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[tokio::test]
    async fn descriptors_travel_with_their_message() {
        let (ours, theirs) = pair().unwrap();
        let (mut read_end, write_end) = std::io::pipe().unwrap();
        let raw = OwnedFd::from(write_end);
        ours.send(b"hello", &[raw.as_raw_fd()]).await.unwrap();
        drop(raw); // the message holds its own copy
                   // The other end, read as the template would (recvmsg with room for fds).
        let mut data = [0u8; 16];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        let mut control = [0u64; 8];
        // SAFETY: test-only recvmsg into local buffers of the stated sizes.
        let (n, fd) = unsafe {
            let mut header: libc::msghdr = std::mem::zeroed();
            header.msg_iov = &mut iov;
            header.msg_iovlen = 1;
            header.msg_control = control.as_mut_ptr().cast();
            header.msg_controllen = std::mem::size_of_val(&control) as _;
            let n = libc::recvmsg(theirs.as_raw_fd(), &mut header, 0);
            let cmsg = libc::CMSG_FIRSTHDR(&header);
            assert!(!cmsg.is_null());
            let mut fd: RawFd = -1;
            std::ptr::copy_nonoverlapping(libc::CMSG_DATA(cmsg), (&mut fd as *mut RawFd).cast(), 4);
            (n, OwnedFd::from_raw_fd(fd))
        };
        assert_eq!(&data[..n as usize], b"hello");
        let mut passed = std::fs::File::from(fd);
        passed.write_all(b"through the copy").unwrap();
        drop(passed);
        let mut text = String::new();
        read_end.read_to_string(&mut text).unwrap();
        assert_eq!(text, "through the copy");
        // A reply, and the end of the other side.
        // SAFETY: send on a descriptor we own.
        unsafe { libc::send(theirs.as_raw_fd(), b"ok".as_ptr().cast(), 2, 0) };
        assert_eq!(ours.recv().await.unwrap(), b"ok");
        drop(theirs);
        assert!(ours.recv().await.unwrap().is_empty());
    }
}
