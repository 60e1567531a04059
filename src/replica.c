/*-------------------------------------------------------------------------
 *
 * replica.c
 *		The counters on streaming standbys, and what a promotion must redo.
 *
 * A primary's saver logs every periodic save to the WAL as well as to its
 * files: the entries that changed (burst buckets, the day's count, tokens),
 * their open reservations and the tombstones of removed entries, in records
 * of a custom resource manager, "ai_ratelimit" (id AI_RMGR_ID).  Each record
 * states whole entries, not increments, so replaying a record twice, or an
 * older one before a newer one, ends in the newer state.  The startup process
 * of every standby (and of a primary recovering from a crash) applies them
 * to its own table under the partition locks, so a standby holds the
 * primary's counters as of its last save, and a standby made by
 * pg_basebackup starts from the copied files plus every record since the
 * backup began.
 *
 * A standby never counts: every function that consumes or resets refuses
 * in recovery (ai_require_primary).  When a standby is promoted, caches it
 * may hold from before are dropped once, by the first call that finds
 * recovery over: per-session plans, prices and users, and the month's
 * spend cached in the shared entries (replayed ai_usage rows fire no
 * trigger), which is then read again from the tables.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xact.h"
#include "access/xloginsert.h"
#include "access/xlogreader.h"
#include "miscadmin.h"
#include "replication/syncrep.h"
#include "replication/walsender.h"
#include "utils/timestamp.h"

#ifdef AI_VALGRIND
#include <valgrind/memcheck.h>
#define AI_CHECK_DEFINED(p, n)	VALGRIND_CHECK_MEM_IS_DEFINED((p), (n))
#else
#define AI_CHECK_DEFINED(p, n)	((void) 0)
#endif

#include "accounts.h"
#include "compact.h"
#include "guard.h"
#include "replica.h"
#include "reservations.h"
#include "resvid.h"
#include "saved.h"
#include "shmem.h"
#include "sweep.h"

/*
 * Entries per record: 4096 entries of 208 bytes are 832 kB; the record
 * also carries their reservations (72 bytes each), and the first one the
 * tombstones (16 bytes each).
 */
#define AI_WAL_CHUNK			4096
StaticAssertDecl(sizeof(AiSavedEntry) == 208, "AI_WAL_CHUNK's comment counts 208 bytes an entry");
StaticAssertDecl(sizeof(AiSavedResv) == 72, "AI_WAL_CHUNK's comment counts 72 bytes a reservation");

static void ai_rmgr_redo(XLogReaderState *record);
static void ai_rmgr_cleanup(void);
static void ai_rmgr_desc(StringInfo buf, XLogReaderState *record);
static const char *ai_rmgr_identify(uint8 info);

static RmgrData ai_rmgr = {
	.rm_name = "ai_ratelimit",
	.rm_redo = ai_rmgr_redo,
	.rm_cleanup = ai_rmgr_cleanup,
	.rm_desc = ai_rmgr_desc,
	.rm_identify = ai_rmgr_identify
};

/*
 * The end of redo, after a crash or at a standby's promotion: the
 * end-of-recovery checkpoint comes next, and a crash after it replays
 * nothing older.  What redo brought back is first saved to the files
 * (guard.c; without files, the guard logs it once it runs).
 */
static void
ai_rmgr_cleanup(void)
{
	if (ai_save_interval > 0)
		(void) ai_guard_save_now();
}

/* From _PG_init, while shared_preload_libraries are loaded. */
void
ai_register_rmgr(void)
{
	RegisterCustomRmgr(AI_RMGR_ID, &ai_rmgr);
}

/*
 * Log one record: entries [0, nentries), their reservations, tombstones.
 * Returns where the record ends.
 */
static XLogRecPtr
ai_wal_log_chunk(const AiSaveHeader *save, const AiSavedEntry *entries, uint32 nentries,
				 const AiSavedResv *resv, uint32 nresv, const AiKey *tomb, uint32 ntomb)
{
	AiSaveHeader hdr = *save;

	hdr.nentries = nentries;
	hdr.nresv = nresv;
	hdr.ntomb = ntomb;
	XLogBeginInsert();
	XLogRegisterData((char *) &hdr, sizeof(hdr));
	if (nentries > 0)
		XLogRegisterData((char *) entries, sizeof(AiSavedEntry) * nentries);
	if (nresv > 0)
		XLogRegisterData((char *) resv, sizeof(AiSavedResv) * nresv);
	if (ntomb > 0)
		XLogRegisterData((char *) tomb, sizeof(AiKey) * ntomb);
	return XLogInsert(AI_RMGR_ID, XLOG_AI_SAVE);
}

/*
 * Log what a save copied (hdr counts the arrays), AI_WAL_CHUNK entries to a
 * record, each with its reservations (they follow their entry in the
 * save's order), the tombstones in the first, and wait until it is flushed
 * so that the walsenders send it now.  Never in recovery.
 */
void
ai_wal_log_save(const AiSaveHeader *hdr, const AiSavedEntry *entries,
				const AiSavedResv *resv, const AiKey *tomb)
{
	uint32		e = 0;
	uint32		r = 0;
	uint32		ntomb = hdr->ntomb;
	XLogRecPtr	end = InvalidXLogRecPtr;

	while (e < hdr->nentries || ntomb > 0)
	{
		uint32		ne = Min(hdr->nentries - e, AI_WAL_CHUNK);
		uint32		r0 = r;

		for (uint32 i = e; i < e + ne; i++)
			while (r < hdr->nresv && memcmp(&resv[r].key, &entries[i].key, sizeof(AiKey)) == 0)
				r++;
		end = ai_wal_log_chunk(hdr, entries + e, ne, resv + r0, r - r0, tomb, ntomb);
		e += ne;
		ntomb = 0;
	}

	/*
	 * Flushed to the end of the last record, not to the insert position: at
	 * a page boundary that points past the page header, beyond any WAL
	 * written, and the flush fails.
	 */
	if (!XLogRecPtrIsInvalid(end))
		XLogFlush(end);
}

/* ---- reservations in the WAL (1.9) ---- */

/*
 * A reservation as XLOG_AI_RESV logs it: the user's, then the shadow of
 * each account its check charged (holder: its key and the id's first
 * bytes, to make the entry on replay), with what it holds.  Replayed, it
 * is restored under its id, or, already there, held at least as long.
 */
typedef struct AiWalHolder
{
	AiKey		key;
	uint8		id_len;
	char		id_prefix[AI_ID_PREFIX_LEN];
} AiWalHolder;

typedef struct AiWalResv
{
	int64		id;
	AiMoney		amount;
	TimestampTz expires_at;
	int64		tokens;
	int32		rules[AI_RESV_RULES];
	bool		all_rules;
	uint8		naccounts;		/* AiWalHolder of each account follow the user's */
	AiWalHolder user;
} AiWalResv;

typedef struct AiWalResvEnd
{
	int64		id;
	AiKey		key;			/* the user's */
} AiWalResvEnd;

/* Where this backend's last reservation record ends: flushed at commit. */
static XLogRecPtr resv_lsn = InvalidXLogRecPtr;

static void
ai_wal_holder(AiWalHolder *h, const AiUser *u)
{
	memset(h, 0, sizeof(*h));
	h->key = u->key;
	h->id_len = (uint8) Min(u->len, 255);
	memcpy(h->id_prefix, u->id, Min(u->len, AI_ID_PREFIX_LEN));
}

/*
 * Log a reservation that a check made (or extended), with its accounts.
 * Caller may hold partition locks: logging takes none of ours, and it is
 * what orders it before any later save that copies the reservation.
 */
void
ai_wal_log_resv(const AiReservation *r, const AiUser *user,
				const AiUser *const *accounts, int naccounts)
{
	AiWalResv	rec;
	AiWalHolder acct[AI_MAX_ACCOUNT_DEPTH];
	XLogRecPtr	end;

	memset(&rec, 0, sizeof(rec));
	rec.id = r->id;
	rec.amount = r->amount;
	rec.expires_at = r->expires_at;
	rec.tokens = r->tokens;
	memcpy(rec.rules, r->rules, sizeof(rec.rules));
	rec.all_rules = r->all_rules;
	naccounts = Min(naccounts, AI_MAX_ACCOUNT_DEPTH);
	rec.naccounts = (uint8) naccounts;
	ai_wal_holder(&rec.user, user);
	for (int k = 0; k < naccounts; k++)
		ai_wal_holder(&acct[k], accounts[k]);
	/* under scripts/memcheck.sh: every byte logged is defined (padding too) */
	AI_CHECK_DEFINED(&rec, sizeof(rec));
	AI_CHECK_DEFINED(acct, sizeof(AiWalHolder) * naccounts);
	XLogBeginInsert();
	XLogRegisterData((char *) &rec, sizeof(rec));
	if (naccounts > 0)
		XLogRegisterData((char *) acct, sizeof(AiWalHolder) * naccounts);
	end = XLogInsert(AI_RMGR_ID, XLOG_AI_RESV);
	if (end > resv_lsn)
		resv_lsn = end;
}

/* Log a reservation given back (not flushed: lost, it is only held longer). */
void
ai_wal_log_resv_end(int64 id, const AiKey *owner)
{
	AiWalResvEnd rec;

	memset(&rec, 0, sizeof(rec));
	rec.id = id;
	rec.key = *owner;
	AI_CHECK_DEFINED(&rec, sizeof(rec));
	XLogBeginInsert();
	XLogRegisterData((char *) &rec, sizeof(rec));
	(void) XLogInsert(AI_RMGR_ID, XLOG_AI_RESV_END);
}

/*
 * The transaction that made reservations commits: they survive what a
 * commit survives.  A transaction with an xid has its commit record after
 * them, flushed (and sent to synchronous standbys) as synchronous_commit
 * says; one without (a check alone writes no row) gets the same here:
 * flushed, and waited for on synchronous standbys, unless
 * synchronous_commit is off, when the WAL writer flushes it soon.
 */
void
ai_wal_resv_flush(void)
{
	XLogRecPtr	lsn = resv_lsn;

	resv_lsn = InvalidXLogRecPtr;
	if (XLogRecPtrIsInvalid(lsn) || TransactionIdIsValid(GetTopTransactionIdIfAny()))
		return;
	if (synchronous_commit > SYNCHRONOUS_COMMIT_OFF)
	{
		XLogFlush(lsn);
		if (SyncRepRequested())
			SyncRepWaitForLSN(lsn, true);
	}
	else
		XLogSetAsyncXactLSN(lsn);
}

/* The transaction rolled back: what it logged needs no flush. */
void
ai_wal_resv_forget(void)
{
	resv_lsn = InvalidXLogRecPtr;
}

/*
 * Replay: the entry of a holder, made if need be (caller holds its lock);
 * NULL when the table is full.
 */
static AiEntry *
ai_redo_holder(const AiWalHolder *h, LWLock *lock, bool account, TimestampTz now)
{
	AiEntry    *e = ai_entry_get(&h->key, ai_key_hash(&h->key), lock, now,
								 h->id_prefix, h->id_len);

	if (e != NULL && account)
		e->kind = AI_ENTRY_ACCOUNT;
	return e;
}

/*
 * Replay one holder's part of a reservation: restored, or held longer.
 * Returns the slot it restored, or -1 (already there, or no room).
 */
static int32
ai_redo_resv_at(const AiWalResv *rec, const AiWalHolder *h, int64 id, bool account,
				TimestampTz now)
{
	uint32		hashcode = ai_key_hash(&h->key);
	LWLock	   *lock = ai_partition_lock(hashcode);
	AiEntry    *e;
	int32		slot;
	int32		restored = -1;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = ai_redo_holder(h, lock, account, now);
	if (e != NULL)
	{
		slot = ai_resv_find(e, id);
		if (slot >= 0)
		{
			AiReservation *r = &ai_resv_slots[slot];

			if (r->state == AI_RESV_OPEN && rec->expires_at > r->expires_at)
				r->expires_at = rec->expires_at;
		}
		else if (ai_resv_restore(e, id, rec->amount, rec->expires_at, &slot))
		{
			AiReservation *r = &ai_resv_slots[slot];

			r->tokens = rec->tokens;
			r->all_rules = rec->all_rules;
			memcpy(r->rules, rec->rules, sizeof(r->rules));
			r->shadow = -1;
			restored = slot;
			/* a record may have settled it since: the user's first check looks */
			if (!account)
				ai_entry_set_restored(e, true);
		}
		ai_entry_changed(e);
	}
	LWLockRelease(lock);
	return restored;
}

static void
ai_redo_resv(const char *data, uint32 len)
{
	AiWalResv	rec;
	const AiWalHolder *acct;
	TimestampTz now = GetCurrentTimestamp();
	int32		prev;

	if (len < sizeof(rec))
		return;
	memcpy(&rec, data, sizeof(rec));
	if (len != sizeof(rec) + sizeof(AiWalHolder) * rec.naccounts ||
		rec.naccounts > AI_MAX_ACCOUNT_DEPTH)
		return;
	if (rec.expires_at <= now)
		return;					/* it holds nothing any more */
	acct = (const AiWalHolder *) (data + sizeof(rec));
	prev = ai_redo_resv_at(&rec, &rec.user, rec.id, false, now);
	for (int k = 0; k < rec.naccounts; k++)
	{
		AiWalHolder h;
		int32		slot;

		memcpy(&h, &acct[k], sizeof(h));
		slot = ai_redo_resv_at(&rec, &h, -rec.id, true, now);
		/* linked as the check linked them: only the startup process writes */
		if (prev >= 0)
			ai_resv_slots[prev].shadow = slot >= 0 ? slot : AI_RESV_SHADOWS_UNLINKED;
		prev = slot;
	}
}

static void
ai_redo_resv_end(const char *data, uint32 len)
{
	AiWalResvEnd rec;
	uint32		hashcode;
	LWLock	   *lock;
	AiEntry    *e;
	int32		slot;

	if (len != sizeof(rec))
		return;
	memcpy(&rec, data, sizeof(rec));
	hashcode = ai_key_hash(&rec.key);
	lock = ai_partition_lock(hashcode);
	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = ai_entry_lookup(&rec.key, hashcode, false, 0, NULL, 0);
	slot = e != NULL ? ai_resv_find(e, rec.id) : -1;
	if (slot >= 0 && ai_resv_slots[slot].state == AI_RESV_OPEN)
		ai_resv_free(e, slot);
	LWLockRelease(lock);
	ai_resv_free_shadows_of(rec.key.dbid, rec.id, GetCurrentTimestamp());
}

static void
ai_rmgr_redo(XLogReaderState *record)
{
	uint8		info = XLogRecGetInfo(record) & ~XLR_INFO_MASK;
	AiSaveHeader hdr;

	if (info == XLOG_AI_IDS)
	{
		ai_ids_redo(XLogRecGetData(record), XLogRecGetDataLen(record));
		return;
	}
	if (info == XLOG_AI_RESV)
	{
		ai_redo_resv(XLogRecGetData(record), XLogRecGetDataLen(record));
		return;
	}
	if (info == XLOG_AI_RESV_END)
	{
		ai_redo_resv_end(XLogRecGetData(record), XLogRecGetDataLen(record));
		return;
	}
	if (info != XLOG_AI_SAVE)
	{
		/* a later version's record: skip it, as one of another layout */
		ereport(WARNING,
				(errmsg("ai_ratelimit skipped a WAL record of unknown kind %u", info),
				 errhint("Run the same ai_ratelimit version on the primary and its standbys.")));
		return;
	}
	memset(&hdr, 0, sizeof(hdr));
	if (XLogRecGetDataLen(record) >= sizeof(hdr))
		memcpy(&hdr, XLogRecGetData(record), sizeof(hdr));
	/* a layout this library does not know: the version or the sizes differ */
	if (XLogRecGetDataLen(record) != sizeof(hdr) + ai_saved_bytes(&hdr) ||
		hdr.ring != AI_BURST_RING || hdr.version < 3 || hdr.version > AI_SAVE_VERSION)
	{
		ereport(WARNING,
				(errmsg("ai_ratelimit skipped counters logged by another version of the extension"),
				 errhint("Run the same ai_ratelimit version on the primary and its standbys.")));
		return;
	}
	(void) ai_apply_saved(&hdr, XLogRecGetData(record) + sizeof(hdr),
						  GetCurrentTimestamp(), AI_APPLY_REPLAY);
}

static void
ai_rmgr_desc(StringInfo buf, XLogReaderState *record)
{
	AiSaveHeader hdr;

	if ((XLogRecGetInfo(record) & ~XLR_INFO_MASK) == XLOG_AI_IDS &&
		XLogRecGetDataLen(record) == sizeof(int64))
	{
		int64		ceiling;

		memcpy(&ceiling, XLogRecGetData(record), sizeof(ceiling));
		appendStringInfo(buf, "reservation ids below ms " INT64_FORMAT, ceiling);
		return;
	}
	if ((XLogRecGetInfo(record) & ~XLR_INFO_MASK) == XLOG_AI_RESV &&
		XLogRecGetDataLen(record) >= sizeof(AiWalResv))
	{
		AiWalResv	rec;

		memcpy(&rec, XLogRecGetData(record), sizeof(rec));
		appendStringInfo(buf, "reservation " INT64_FORMAT ", accounts %u, until %s",
						 rec.id, rec.naccounts, timestamptz_to_str(rec.expires_at));
		return;
	}
	if ((XLogRecGetInfo(record) & ~XLR_INFO_MASK) == XLOG_AI_RESV_END &&
		XLogRecGetDataLen(record) == sizeof(AiWalResvEnd))
	{
		AiWalResvEnd rec;

		memcpy(&rec, XLogRecGetData(record), sizeof(rec));
		appendStringInfo(buf, "reservation " INT64_FORMAT " released", rec.id);
		return;
	}
	if ((XLogRecGetInfo(record) & ~XLR_INFO_MASK) != XLOG_AI_SAVE ||
		XLogRecGetDataLen(record) < sizeof(hdr))
		return;
	memcpy(&hdr, XLogRecGetData(record), sizeof(hdr));
	appendStringInfo(buf, "users %u, reservations %u, removed %u, saved at %s",
					 hdr.nentries, hdr.nresv, hdr.ntomb, timestamptz_to_str(hdr.written_at));
}

static const char *
ai_rmgr_identify(uint8 info)
{
	switch (info & ~XLR_INFO_MASK)
	{
		case XLOG_AI_SAVE:
			return "SAVE";
		case XLOG_AI_IDS:
			return "IDS";
		case XLOG_AI_RESV:
			return "RESV";
		case XLOG_AI_RESV_END:
			return "RESV_END";
		default:
			return NULL;
	}
}

/*
 * Once per server start, by the first call that finds recovery over (a
 * start that replayed nothing and restored a clean shutdown's base has
 * nothing stale, and skips it: persist.c):
 * every cache that replay may have left stale is dropped (the caches of
 * whole tables need not be: replay brings their invalidations, config.c;
 * the users and the account tree are kept by generations).  The flag is set
 * only after the generations moved, so a session that sees it set never
 * uses a cache from before.  Cached spend is not among them: no session
 * loads it during recovery (every caller of ai_ensure_spend runs on a
 * primary only), replay never sets it, and the only spend in shared memory
 * when recovery ends is what a primary's clean shutdown saved, restored
 * only by a start that replays no WAL (persist.c), so exact.
 */
static void
ai_after_recovery(void)
{
	if (pg_atomic_read_u32(&ai_shared->caches_fresh) != 0)
		return;
	LWLockAcquire(ai_shared->users_lock, LW_EXCLUSIVE);
	if (pg_atomic_read_u32(&ai_shared->caches_fresh) == 0)
	{
		pg_atomic_fetch_add_u32(&ai_shared->accounts_gen, 1);
		pg_atomic_fetch_add_u32(&ai_shared->users_gen, 1);
		pg_atomic_fetch_add_u32(&ai_shared->limits_gen, 1);
		pg_atomic_fetch_add_u32(&ai_shared->ext_gen, 1);
		pg_write_barrier();
		pg_atomic_write_u32(&ai_shared->caches_fresh, 1);
	}
	LWLockRelease(ai_shared->users_lock);
}

/* Has this session seen its server out of recovery (ai_require_primary)? */
bool		ai_on_primary = false;

/*
 * The first check of ai_require_primary() in a session, and every check on
 * a standby: a standby's counters are a copy, up to one save interval old,
 * and what it took would be lost anyway.
 */
void
ai_require_primary_slow(const char *func)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("%s must run on the primary: this server is a standby", func),
				 errdetail("A standby's ai_ratelimit counters are a copy of the primary's, as of its last save; checks run on the primary, where they count."),
				 errhint("Connect to the primary for checks and records (for example with target_session_attrs=read-write).")));
	ai_after_recovery();
	ai_compact_note_database();
	ai_on_primary = true;
}
