/*-------------------------------------------------------------------------
 *
 * persist.c
 *		Keeping the shared counters across restarts.
 *
 * The live part of every entry (burst buckets, the day's count) and every
 * open reservation are written to PGDATA/pg_stat/ai_ratelimit.dat:
 *   - by the postmaster when it shuts down cleanly, and
 *   - by the background worker "ai_ratelimit saver" every
 *     ai_ratelimit.save_interval when something changed,
 * always as a temporary file, fsynced, then renamed over the old one
 * (durable_rename), so a crash leaves the previous complete file.  The file
 * is read once when shared memory is set up, at start and after a crash
 * restart.  So a clean restart keeps every count, and a crash loses at most
 * what changed during the last save_interval.  Monthly spend is not saved:
 * it is reloaded from the usage tables.
 *
 * Locking: the writer copies entries while holding every partition lock in
 * shared mode, then writes without locks.  Loading runs in the postmaster
 * before any backend exists: it takes no partition lock (nothing else can
 * touch the hash yet), and ai_resv_create takes resv_lock, uncontended.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "port/pg_crc32c.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "ai_ratelimit.h"

#define AI_SAVE_FILE		"pg_stat/ai_ratelimit.dat"
#define AI_SAVE_TMP			"pg_stat/ai_ratelimit.dat.tmp"
#define AI_SAVE_MAGIC		0x4149524C	/* "AIRL" */
#define AI_SAVE_VERSION		2

PGDLLEXPORT void ai_saver_main(Datum arg);

typedef struct AiSaveHeader
{
	uint32		magic;
	uint32		version;
	uint32		ring;			/* AI_BURST_RING of the writer */
	uint32		nentries;
	uint32		nresv;
	TimestampTz written_at;
} AiSaveHeader;

typedef struct AiSavedEntry
{
	AiKey		key;
	int64		burst_head;
	int32		burst_window_ms;
	uint32		burst[AI_BURST_RING];
	int32		day;
	uint32		daily_count;
	int32		tokens_head;
	uint32		tokens[AI_TOKEN_RING];
	uint16		plan_hash;
	uint8		id_len;
	char		id_prefix[AI_ID_PREFIX_LEN];
} AiSavedEntry;

typedef struct AiSavedResv
{
	int64		id;
	AiKey		key;
	AiMoney		amount;
	TimestampTz expires_at;
} AiSavedResv;

/*
 * Write the file.  Caller must hold no partition lock.  Returns false (with
 * a LOG message) when the file could not be written; the old one stays.
 */
static bool
ai_save(void)
{
	HASH_SEQ_STATUS status;
	AiEntry    *e;
	AiSaveHeader hdr;
	AiSavedEntry *entries;
	AiSavedResv *resv;
	uint32		nentries = 0;
	uint32		nresv = 0;
	long		total;
	TimestampTz now = GetCurrentTimestamp();
	AiCalendar	cal;
	pg_crc32c	crc;
	FILE	   *f;

	if (ai_shared == NULL || ai_hash == NULL)
		return false;

	ai_calendar_at(now, &cal);
	total = hash_get_num_entries(ai_hash);
	entries = palloc_extended(sizeof(AiSavedEntry) * Max(total, 1), MCXT_ALLOC_HUGE);
	resv = palloc_extended(sizeof(AiSavedResv) * Max(ai_max_reservations, 1), MCXT_ALLOC_HUGE);

	pg_atomic_write_u32(&ai_shared->dirty, 0);
	ai_lock_all(LW_SHARED);
	hash_seq_init(&status, ai_hash);
	while ((e = hash_seq_search(&status)) != NULL)
	{
		AiSavedEntry *s;

		if (!ai_entry_is_live(e, now, cal.day) || nentries >= total)
			continue;
		s = &entries[nentries++];
		memset(s, 0, sizeof(*s));
		s->key = e->key;
		s->burst_head = e->burst_head;
		s->burst_window_ms = e->burst_window_ms;
		memcpy(s->burst, e->burst, sizeof(s->burst));
		s->day = e->day;
		s->daily_count = e->daily_count;
		s->tokens_head = e->tokens_head;
		memcpy(s->tokens, e->tokens, sizeof(s->tokens));
		s->plan_hash = e->plan_hash;
		s->id_len = e->id_len;
		memcpy(s->id_prefix, e->id_prefix, sizeof(s->id_prefix));
		for (int32 slot = e->resv_head; slot >= 0; slot = ai_shared->resv[slot].next)
		{
			AiReservation *r = &ai_shared->resv[slot];

			if (r->state != AI_RESV_FREE && r->expires_at > now)
			{
				resv[nresv].id = r->id;
				resv[nresv].key = r->key;
				resv[nresv].amount = r->amount;
				resv[nresv].expires_at = r->expires_at;
				nresv++;
			}
		}
	}
	ai_unlock_all();

	memset(&hdr, 0, sizeof(hdr));
	hdr.magic = AI_SAVE_MAGIC;
	hdr.version = AI_SAVE_VERSION;
	hdr.ring = AI_BURST_RING;
	hdr.nentries = nentries;
	hdr.nresv = nresv;
	hdr.written_at = now;

	INIT_CRC32C(crc);
	COMP_CRC32C(crc, &hdr, sizeof(hdr));
	COMP_CRC32C(crc, entries, sizeof(AiSavedEntry) * nentries);
	COMP_CRC32C(crc, resv, sizeof(AiSavedResv) * nresv);
	FIN_CRC32C(crc);

	f = AllocateFile(AI_SAVE_TMP, PG_BINARY_W);
	if (f == NULL ||
		fwrite(&hdr, sizeof(hdr), 1, f) != 1 ||
		(nentries > 0 && fwrite(entries, sizeof(AiSavedEntry), nentries, f) != nentries) ||
		(nresv > 0 && fwrite(resv, sizeof(AiSavedResv), nresv, f) != nresv) ||
		fwrite(&crc, sizeof(crc), 1, f) != 1 ||
		FreeFile(f) != 0)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", AI_SAVE_TMP)));
		if (f)
			FreeFile(f);
		unlink(AI_SAVE_TMP);
		pfree(entries);
		pfree(resv);
		pg_atomic_write_u32(&ai_shared->dirty, 1);
		return false;
	}
	pfree(entries);
	pfree(resv);
	/* fsyncs the file and the directory: a crash keeps old or new, whole */
	if (durable_rename(AI_SAVE_TMP, AI_SAVE_FILE, LOG) != 0)
		return false;
	return true;
}

/*
 * Read the file into freshly created shared memory.  Called from the shmem
 * startup hook in the postmaster, before any backend runs.
 * A missing file is normal; a damaged one is reported and ignored.
 */
void
ai_load(void)
{
	FILE	   *f;
	AiSaveHeader hdr;
	AiSavedEntry se;
	AiSavedResv sr;
	pg_crc32c	crc;
	pg_crc32c	file_crc;
	TimestampTz now = GetCurrentTimestamp();
	uint32		loaded = 0;
	long		data_start;

	f = AllocateFile(AI_SAVE_FILE, PG_BINARY_R);
	if (f == NULL)
	{
		if (errno != ENOENT)
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", AI_SAVE_FILE)));
		return;
	}

	/* first pass: check the whole file */
	if (fread(&hdr, sizeof(hdr), 1, f) != 1 ||
		hdr.magic != AI_SAVE_MAGIC || hdr.version != AI_SAVE_VERSION ||
		hdr.ring != AI_BURST_RING)
		goto bad;
	data_start = ftell(f);
	INIT_CRC32C(crc);
	COMP_CRC32C(crc, &hdr, sizeof(hdr));
	for (uint32 i = 0; i < hdr.nentries; i++)
	{
		if (fread(&se, sizeof(se), 1, f) != 1)
			goto bad;
		COMP_CRC32C(crc, &se, sizeof(se));
	}
	for (uint32 i = 0; i < hdr.nresv; i++)
	{
		if (fread(&sr, sizeof(sr), 1, f) != 1)
			goto bad;
		COMP_CRC32C(crc, &sr, sizeof(sr));
	}
	FIN_CRC32C(crc);
	if (fread(&file_crc, sizeof(file_crc), 1, f) != 1 || !EQ_CRC32C(crc, file_crc))
		goto bad;

	/* second pass: load */
	if (fseek(f, data_start, SEEK_SET) != 0)
		goto bad;
	for (uint32 i = 0; i < hdr.nentries; i++)
	{
		AiEntry    *e;

		if (fread(&se, sizeof(se), 1, f) != 1)
			goto bad;
		e = ai_entry_lookup(&se.key, ai_key_hash(&se.key), true, now,
							se.id_prefix, se.id_len);
		if (e == NULL)
			break;				/* max_keys was lowered: keep what fits */
		e->burst_head = se.burst_head;
		e->burst_window_ms = se.burst_window_ms;
		memcpy(e->burst, se.burst, sizeof(e->burst));
		e->day = se.day;
		e->daily_count = se.daily_count;
		e->tokens_head = se.tokens_head;
		memcpy(e->tokens, se.tokens, sizeof(e->tokens));
		e->plan_hash = se.plan_hash;
		e->id_len = se.id_len;
		loaded++;
	}
	for (uint32 i = 0; i < hdr.nresv; i++)
	{
		AiEntry    *e;

		if (fread(&sr, sizeof(sr), 1, f) != 1)
			goto bad;
		if (sr.expires_at <= now)
			continue;
		e = ai_entry_lookup(&sr.key, ai_key_hash(&sr.key), false, now, NULL, 0);
		if (e != NULL)
			ai_resv_create(e, sr.amount, sr.expires_at);
	}
	FreeFile(f);
	ereport(LOG,
			(errmsg("ai_ratelimit restored the counters of %u users and %u reservations",
					loaded, hdr.nresv)));
	return;

bad:
	ereport(LOG,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("ignoring damaged ai_ratelimit file \"%s\"", AI_SAVE_FILE)));
	FreeFile(f);
}

/* Postmaster exit: save unless this is a crash. */
void
ai_save_at_exit(int code, Datum arg)
{
	if (code != 0)
		return;
	ai_save();
}

void
ai_register_saver(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS;
	worker.bgw_start_time = BgWorkerStart_PostmasterStart;
	worker.bgw_restart_time = 10;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "ai_ratelimit");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "ai_saver_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "ai_ratelimit saver");
	snprintf(worker.bgw_type, BGW_MAXLEN, "ai_ratelimit saver");
	RegisterBackgroundWorker(&worker);
}

/* The background worker: save every save_interval when something changed. */
void
ai_saver_main(Datum arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	for (;;)
	{
		int			interval = ai_save_interval > 0 ? ai_save_interval : 60000;

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 interval, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			break;
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (ai_save_interval > 0 && pg_atomic_read_u32(&ai_shared->dirty) != 0)
			ai_save();
	}
	proc_exit(0);
}
