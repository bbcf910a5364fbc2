/* device — the device authorization grant (RFC 8628) as Entra serves it: the codes behind
 * /{tenant}/oauth2/v2.0/devicecode, their polling state, and the verification page
 * {base}/devicelogin where a person enters the user code and signs in (or declines).
 * token.c answers the devicecode endpoint and the device_code grant with this store.
 *
 * Contract
 *  - A device_store is thread-safe (one mutex). It holds at most DEVICE_MAX_PENDING flows in
 *    memory only: restarting the issuer forgets them. Entries are purged DEVICE_PURGE_AFTER_S
 *    after they expire; until then polling an expired code answers DEVICE_EXPIRED.
 *  - device codes are looked up by their SHA-256 (compared in constant time) and never
 *    logged; user codes (short-lived, shown on the device's screen) may be.
 *  - An approved code is redeemed once: device_poll() returns DEVICE_APPROVED once, then the
 *    code is unknown.
 *  - device_page() always answers the request; passwords are never logged.
 */
#ifndef AGENTID_ISSUER_DEVICE_H
#define AGENTID_ISSUER_DEVICE_H

#include "core/http_server.h"
#include "issuer/directory.h"

#include <stdbool.h>

#define DEVICE_USER_CODE_LEN 9           /* Entra's: nine letters and digits */
#define DEVICE_MAX_PENDING 1024
#define DEVICE_PURGE_AFTER_S 600

typedef struct device_store device_store;

device_store *device_store_new(void);
void device_store_free(device_store *s);

/* Start a flow for client (app id) and the scope it asked for. Fills user_code and *device_code
 * (caller frees). False when DEVICE_MAX_PENDING flows are live. */
bool device_start(device_store *s, const char *client_id, const char *scope, int lifetime_s,
                  int interval_s, char user_code[DEVICE_USER_CODE_LEN + 1], char **device_code);

typedef enum {
    DEVICE_PENDING,       /* nobody has answered yet */
    DEVICE_SLOW_DOWN,     /* pending, and polled again sooner than the interval */
    DEVICE_APPROVED,      /* signed in: *user_oid and *scope are set (caller frees); now redeemed */
    DEVICE_DECLINED,      /* the person declined on the page */
    DEVICE_EXPIRED,       /* its lifetime is over */
    DEVICE_UNKNOWN,       /* never issued here, already redeemed, or purged */
    DEVICE_WRONG_CLIENT,  /* issued to another client (the entry is left as it was) */
} device_state;

/* The token endpoint's poll for device_code by client (app id). */
device_state device_poll(device_store *s, const char *device_code, const char *client_id,
                         char **user_oid, char **scope);

/* GET or POST {base}/devicelogin: the code form (input #otc, button #next), then the sign-in
 * form of authorize.c (#login, #passwd, #submit) with a #deny button. Each form after the first
 * carries the flow's own hidden value, so a bare cross-site POST cannot approve or decline. */
void device_page(device_store *s, http_req *r, const directory *d);

#endif
