package main

import "syscall"

// A listener's connections arrive one message each, with its descriptor.
const listenerSocketType = syscall.SOCK_SEQPACKET

// socketpair makes a connected pair whose ends no process the host starts inherits.
func socketpair(typ int) ([2]int, error) {
	return syscall.Socketpair(syscall.AF_UNIX, typ|syscall.SOCK_CLOEXEC, 0)
}

// recvmsg reads one message; descriptors it carries arrive close-on-exec.
func recvmsg(fd int, p, oob []byte) (n, oobn int, err error) {
	n, oobn, _, _, err = syscall.Recvmsg(fd, p, oob, syscall.MSG_CMSG_CLOEXEC)
	return
}

// received does what the kernel did not already do for descriptors recvmsg returned.
func received(fds []int) {}
