/* $OpenBSD: cipher-chachapoly.h,v 1.4 2014/06/24 01:13:21 djm Exp $ */

/*
 * Copyright (c) Damien Miller 2013 <djm@mindrot.org>
 *
 * Permission to use, copy, modify, and distribute this software for any
 * purpose with or without fee is hereby granted, provided that the above
 * copyright notice and this permission notice appear in all copies.
 *
 * THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL WARRANTIES
 * WITH REGARD TO THIS SOFTWARE INCLUDING ALL IMPLIED WARRANTIES OF
 * MERCHANTABILITY AND FITNESS. IN NO EVENT SHALL THE AUTHOR BE LIABLE FOR
 * ANY SPECIAL, DIRECT, INDIRECT, OR CONSEQUENTIAL DAMAGES OR ANY DAMAGES
 * WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR PROFITS, WHETHER IN AN
 * ACTION OF CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT OF
 * OR IN CONNECTION WITH THE USE OR PERFORMANCE OF THIS SOFTWARE.
 *
 * SPDX-License-Identifier: BSD-2-Clause
 */
#ifndef CHACHA_POLY_AEAD_H
#define CHACHA_POLY_AEAD_H

#include "chacha.h"
#include "poly1305.h"

#define CHACHA_KEYLEN   32 /* Only 256-bit keys used here */

/* maestro-relay patch: with OpenSSL 3, ChaCha20 and Poly1305 come from
   libcrypto (vectorised), as OpenSSH's cipher-chachapoly-libcrypto.c does;
   the portable code below stays the fallback when libcrypto lacks them. */
#ifndef LIBSSH2_PRIV_H
/* the struct's layout depends on openssl.h: every includer must agree */
#error "include libssh2_priv.h before cipher-chachapoly.h"
#endif
#if defined(LIBSSH2_OPENSSL) && !defined(LIBSSH2_WOLFSSL) && \
    defined(USE_OPENSSL_3) && !defined(OPENSSL_NO_CHACHA) && \
    !defined(OPENSSL_NO_POLY1305)
#define CHACHAPOLY_LIBCRYPTO 1
#endif

struct chachapoly_ctx {
    struct chacha_ctx main_ctx, header_ctx;
#ifdef CHACHAPOLY_LIBCRYPTO
    /* all three set, or all three NULL (then the portable code runs) */
    EVP_CIPHER_CTX *main_evp, *header_evp;
    EVP_MAC_CTX *poly_mac;
#endif
};

int chachapoly_init(struct chachapoly_ctx *ctx, const unsigned char *key,
                    size_t keylen);
int chachapoly_crypt(struct chachapoly_ctx *ctx, libssh2_uint64_t seqnr,
                     unsigned char *dest, const unsigned char *src, size_t len,
                     size_t aadlen, int do_encrypt);
int chachapoly_get_length(struct chachapoly_ctx *ctx,
                          unsigned int *plenp, libssh2_uint64_t seqnr,
                          const unsigned char *cp, size_t len);
void chachapoly_free(struct chachapoly_ctx *ctx);
/* 1 when a new context runs on libcrypto, 0 when on the portable code: for
   the embedding program's tests (maestro-relay's tests/it/sftp.rs). */
LIBSSH2_API int libssh2_chachapoly_uses_libcrypto(void);

#endif /* CHACHA_POLY_AEAD_H */
