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
 * Locking: the writer copies the entries of one partition at a time,
 * holding only that partition's lock in shared mode, then writes without
 * locks.  Loading runs in the postmaster
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

/* What a save copies out of shared memory; grown only between partitions. */
typedef struct AiSaveBuf
{
	AiSavedEntry *entries;
	uint32		nentries;
	uint32		maxentries;
	AiSavedResv *resv;
	uint32		nresv;
	uint32		maxresv;
} AiSaveBuf;

/* Room for `entries` more entries and all reservations; never under a lock. */
static void
ai_save_buf_grow(AiSaveBuf *b, uint32 entries)
{
	uint32		want_e = b->nentries + entries;
	uint32		want_r = b->nresv + (uint32) ai_max_reservations;

	if (want_e > b->maxentries)
	{
		b->maxentries = Max(want_e, b->maxentries * 2);
		b->entries = repalloc_huge(b->entries, sizeof(AiSavedEntry) * b->maxentries);
	}
	if (want_r > b->maxresv)
	{
		b->maxresv = Max(want_r, b->maxresv * 2);
		b->resv = repalloc_huge(b->resv, sizeof(AiSavedResv) * b->maxresv);
	}
}

/*
 * Copy the live entries of one partition and their reservations, holding
 * that partition's lock (shared) only.  Returns false, copying nothing,
 * when the buffer is too small for what the partition holds now.
 */
static bool
ai_save_copy_partition(AiSaveBuf *b, int partition, TimestampTz now, int32 today)
{
	LWLock	   *lock = ai_partition_lock_at(partition);
	AiPartIter	it;
	AiEntry    *e;

	LWLockAcquire(lock, LW_SHARED);
	if ((uint32) ai_table->part_count[partition] > b->maxentries - b->nentries)
	{
		LWLockRelease(lock);
		return false;
	}
	ai_part_iter_init(&it, partition);
	while ((e = ai_part_iter_next(&it)) != NULL)
	{
		AiSavedEntry *s;

		if (!ai_entry_is_live(e, now, today))
			continue;
		s = &b->entries[b->nentries++];
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
		for (int32 slot = e->resv_head; slot >= 0 && b->nresv < b->maxresv;
			 slot = ai_shared->resv[slot].next)
		{
			AiReservation *r = &ai_shared->resv[slot];

			if (r->state != AI_RESV_FREE && r->expires_at > now)
			{
				b->resv[b->nresv].id = r->id;
				b->resv[b->nresv].key = r->key;
				b->resv[b->nresv].amount = r->amount;
				b->resv[b->nresv].expires_at = r->expires_at;
				b->nresv++;
			}
		}
	}
	LWLockRelease(lock);
	return true;
}

/*
 * Write the file.  Copies one partition at a time, so a check waits at most
 * for the copy of its own partition, never for the whole table or the
 * write.  Caller must hold no partition lock.  Returns false (with a LOG
 * message) when the file could not be written; the old one stays.
 */
static bool
ai_save(void)
{
	AiSaveHeader hdr;
	AiSaveBuf	b;
	TimestampTz now = GetCurrentTimestamp();
	AiCalendar	cal;
	pg_crc32c	crc;
	FILE	   *f;

	if (ai_shared == NULL || ai_table == NULL)
		return false;

	ai_calendar_at(now, &cal);
	memset(&b, 0, sizeof(b));
	b.maxentries = Max(ai_entry_count(), 1024);
	b.entries = palloc_extended(sizeof(AiSavedEntry) * b.maxentries, MCXT_ALLOC_HUGE);
	b.maxresv = Max(ai_max_reservations, 1);
	b.resv = palloc_extended(sizeof(AiSavedResv) * b.maxresv, MCXT_ALLOC_HUGE);

	pg_atomic_write_u32(&ai_shared->dirty, 0);
	for (int p = 0; p < AI_NUM_PARTITIONS; p++)
	{
		/* the unlocked count only sizes the buffer; the copy checks again */
		while (!ai_save_copy_partition(&b, p, now, cal.day))
			ai_save_buf_grow(&b, (uint32) ai_table->part_count[p] + 64);
		if (b.maxresv - b.nresv < (uint32) ai_max_reservations)
			ai_save_buf_grow(&b, 0);
	}

	memset(&hdr, 0, sizeof(hdr));
	hdr.magic = AI_SAVE_MAGIC;
	hdr.version = AI_SAVE_VERSION;
	hdr.ring = AI_BURST_RING;
	hdr.nentries = b.nentries;
	hdr.nresv = b.nresv;
	hdr.written_at = now;

	INIT_CRC32C(crc);
	COMP_CRC32C(crc, &hdr, sizeof(hdr));
	COMP_CRC32C(crc, b.entries, sizeof(AiSavedEntry) * b.nentries);
	COMP_CRC32C(crc, b.resv, sizeof(AiSavedResv) * b.nresv);
	FIN_CRC32C(crc);

	f = AllocateFile(AI_SAVE_TMP, PG_BINARY_W);
	if (f == NULL ||
		fwrite(&hdr, sizeof(hdr), 1, f) != 1 ||
		(b.nentries > 0 && fwrite(b.entries, sizeof(AiSavedEntry), b.nentries, f) != b.nentries) ||
		(b.nresv > 0 && fwrite(b.resv, sizeof(AiSavedResv), b.nresv, f) != b.nresv) ||
		fwrite(&crc, sizeof(crc), 1, f) != 1 ||
		FreeFile(f) != 0)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", AI_SAVE_TMP)));
		if (f)
			FreeFile(f);
		unlink(AI_SAVE_TMP);
		pfree(b.entries);
		pfree(b.resv);
		pg_atomic_write_u32(&ai_shared->dirty, 1);
		return false;
	}
	pfree(b.entries);
	pfree(b.resv);
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

/*
 * The background worker: every second, sweep (expired reservations, dead
 * entries when the table is nearly full); every save_interval, save when
 * something changed.
 */
void
ai_saver_main(Datum arg)
{
	TimestampTz last_save = GetCurrentTimestamp();

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	for (;;)
	{
		TimestampTz now;
		int			tick = ai_save_interval > 0 ? Min(ai_save_interval, 1000) : 1000;

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 tick, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			break;
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		now = GetCurrentTimestamp();
		ai_sweep_background(now);
		if (ai_save_interval > 0 && pg_atomic_read_u32(&ai_shared->dirty) != 0 &&
			now - last_save >= (int64) ai_save_interval * 1000)
		{
			ai_save();
			last_save = now;
		}
	}
	proc_exit(0);
}
