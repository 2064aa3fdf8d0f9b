// The C API of libtailscale (a tailnet node embedded in a process), as Tailscale's own
// tailscale.h declares it; tailscale.go implements it over tsnet. Functions return 0 on
// success and -1 on failure (tailscale_errmsg says why), except tailscale_accept and
// tailscale_getremoteaddr, which return an errno value.
#ifndef TAILSCALE_H
#define TAILSCALE_H

#include <stddef.h>

typedef int tailscale;
typedef int tailscale_conn;
typedef int tailscale_listener;

extern tailscale tailscale_new(void);
extern int tailscale_start(tailscale sd);
extern int tailscale_up(tailscale sd);
extern int tailscale_close(tailscale sd);

extern int tailscale_set_dir(tailscale sd, const char* dir);
extern int tailscale_set_hostname(tailscale sd, const char* hostname);
extern int tailscale_set_authkey(tailscale sd, const char* authkey);
extern int tailscale_set_control_url(tailscale sd, const char* control_url);
extern int tailscale_set_ephemeral(tailscale sd, int ephemeral);
extern int tailscale_set_logfd(tailscale sd, int fd);

extern int tailscale_getips(tailscale sd, char* buf, size_t buflen);
extern int tailscale_dial(tailscale sd, const char* network, const char* addr, tailscale_conn* conn_out);
extern int tailscale_listen(tailscale sd, const char* network, const char* addr, tailscale_listener* listener_out);
extern int tailscale_accept(tailscale_listener listener, tailscale_conn* conn_out);
extern int tailscale_getremoteaddr(tailscale_listener l, tailscale_conn conn, char* buf, size_t buflen);
extern int tailscale_loopback(tailscale sd, char* addr_out, size_t addrlen, char* proxy_cred_out, char* local_api_cred_out);
extern int tailscale_errmsg(tailscale sd, char* buf, size_t buflen);

#endif
