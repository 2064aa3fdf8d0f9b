package main

import "syscall"

// macOS has no SOCK_SEQPACKET for Unix sockets. On a stream, a message that carries a
// descriptor is still read alone: the kernel ends a read where the next one's control
// data begins, and each message is far shorter than the buffer that reads it.
const listenerSocketType = syscall.SOCK_STREAM

// socketpair makes a connected pair whose ends no process the host starts inherits.
// macOS cannot make them close-on-exec at once: that is set right after, with Go's own
// forks held off meanwhile.
func socketpair(typ int) ([2]int, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, typ, 0)
	if err == nil {
		syscall.CloseOnExec(fds[0])
		syscall.CloseOnExec(fds[1])
	}
	return fds, err
}

// recvmsg reads one message (macOS has no MSG_CMSG_CLOEXEC; see received).
func recvmsg(fd int, p, oob []byte) (n, oobn int, err error) {
	n, oobn, _, _, err = syscall.Recvmsg(fd, p, oob, 0)
	return
}

// received makes descriptors recvmsg returned close-on-exec.
func received(fds []int) {
	for _, fd := range fds {
		syscall.CloseOnExec(fd)
	}
}
