// libopendmarc (Debian libopendmarc-dev): DMARC policy evaluation (RFC 7489).
#include <sys/types.h>
#include <sys/param.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <opendmarc/dmarc.h>

// Exported by libopendmarc but not declared in dmarc.h: the organizational domain of a
// domain by the Public Suffix List loaded with the library.
int opendmarc_get_tld(u_char *domain, u_char *tld, size_t tld_len);
