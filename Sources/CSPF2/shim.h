// libspf2 (Debian libspf2-dev): RFC 7208 evaluation for the spf stage.
// spf.h expects the socket and resolver headers before it.
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netdb.h>
#include <spf2/spf.h>
#include <spf2/spf_dns.h>
#include <spf2/spf_dns_rr.h>
