/*
 * route: the AI route of the article ai_ratelimit grows from, against the
 * same route on ai_ratelimit, for bench/run.
 *
 *   route seed  SECONDS CLIENTS USERS PREFIX PGCONN REDIS_SOCKET
 *   route ours  SECONDS CLIENTS USERS PREFIX PGCONN
 *   route floor SECONDS CLIENTS USERS PREFIX PGCONN
 *   route first USERS PREFIX_A PREFIX_B PGCONN
 *
 * seed: Redis INCR + EXPIRE of the user's burst key (one round trip,
 * pipelined), then COUNT of the user's usage rows of the last 24 hours and
 * SUM of this month's cost on the article's usage table, then the INSERT of
 * the call's row.
 * ours: ai_check_limit with an estimate, then ai_record_usage settling its
 * reservation.
 * floor: what ours cannot do with less, its physical floor: two durable
 * commits, the first writing a hold row (route_holds), the second deleting
 * it and writing the call's usage row (route_usage, ai_usage's columns and
 * indexes, none of its triggers).
 * Each of CLIENTS threads runs routes for SECONDS, for users PREFIX1 ..
 * PREFIXUSERS at random; prints routes per second.
 * first: one ai_check_limit with an estimate for each user in turn, timed,
 * users of the two prefixes alternating on one connection, so that both
 * see the same moments of the machine; prints the median of each prefix in
 * milliseconds (run it on a fresh start: each user's first budget check
 * loads the month's spend).
 *
 * Redis is spoken to in RESP over its unix socket: two commands, no library.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "libpq-fe.h"

static int	seconds;
static int	users;
static const char *prefix;
static const char *pgconn;
static const char *redis_path;
typedef enum RouteMode
{
	ROUTE_SEED,
	ROUTE_OURS,
	ROUTE_FLOOR
} RouteMode;

static RouteMode mode;

typedef struct Client
{
	pthread_t	thread;
	unsigned int rnd;
	long		routes;
	const char *failed;
} Client;

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int
redis_connect(void)
{
	struct sockaddr_un a;
	int			fd = socket(AF_UNIX, SOCK_STREAM, 0);

	memset(&a, 0, sizeof(a));
	a.sun_family = AF_UNIX;
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", redis_path);
	if (fd < 0 || connect(fd, (struct sockaddr *) &a, sizeof(a)) != 0)
		return -1;
	return fd;
}

/* Send INCR key and EXPIRE key 60 at once; read both integer replies. */
static int
redis_incr_expire(int fd, const char *key, long *count)
{
	char		cmd[512];
	char		reply[128];
	int			klen = (int) strlen(key);
	int			len = snprintf(cmd, sizeof(cmd),
							   "*2\r\n$4\r\nINCR\r\n$%d\r\n%s\r\n"
							   "*3\r\n$6\r\nEXPIRE\r\n$%d\r\n%s\r\n$2\r\n60\r\n",
							   klen, key, klen, key);
	int			got = 0;
	int			lines = 0;

	if (write(fd, cmd, len) != len)
		return -1;
	/* two replies, each ":<n>\r\n" */
	while (lines < 2)
	{
		ssize_t		n = read(fd, reply + got, sizeof(reply) - 1 - got);

		if (n <= 0)
			return -1;
		for (ssize_t i = got; i < got + n; i++)
			if (reply[i] == '\n')
				lines++;
		got += n;
	}
	reply[got] = '\0';
	if (reply[0] != ':')
		return -1;
	*count = strtol(reply + 1, NULL, 10);
	return 0;
}

static int
ok(PGresult *r, ExecStatusType want)
{
	int			good = PQresultStatus(r) == want;

	if (!good)
		fprintf(stderr, "route: %s", PQresultErrorMessage(r));
	PQclear(r);
	return good;
}

/* The statements of each route, prepared on every connection. */
typedef struct Stmt
{
	const char *name;
	const char *sql;
} Stmt;

static const Stmt seed_stmts[] = {
	{"count", "SELECT count(*) FROM seed_usage WHERE user_id = $1"
	 " AND created_at > now() - interval '24 hours'"},
	{"sum", "SELECT sum(cost_cents) FROM seed_usage WHERE user_id = $1"
	 " AND created_at >= date_trunc('month', now())"},
	{"insert", "INSERT INTO seed_usage (user_id, input_tokens, output_tokens, model, cost_cents)"
	 " VALUES ($1, 812, 1045, 'claude-sonnet-4-6', 2)"},
	{NULL, NULL}
};

static const Stmt ours_stmts[] = {
	{"check", "SELECT reservation_id FROM ai_check_limit($1, 'route', 2)"},
	{"record", "SELECT ai_record_usage($1, 'claude-sonnet-4-6', 812, 1045, 0, $2::bigint)"},
	{NULL, NULL}
};

static const Stmt floor_stmts[] = {
	{"check", "INSERT INTO route_holds (user_id, cents, expires_at)"
	 " VALUES ($1, 2, now() + interval '10 minutes') RETURNING id"},
	{"record", "WITH settled AS (DELETE FROM route_holds WHERE id = $2::bigint)"
	 " INSERT INTO route_usage (created_at, day, user_id, model, priced_as,"
	 " input_tokens, output_tokens, cached_input_tokens, cost_cents, reservation_id)"
	 " VALUES (now(), current_date, $1, 'claude-sonnet-4-6', 'claude-sonnet-4-6',"
	 " 812, 1045, 0, 2, $2::bigint)"},
	{NULL, NULL}
};

static int
prepare_all(PGconn *conn, const Stmt *s)
{
	for (; s->name != NULL; s++)
		if (!ok(PQprepare(conn, s->name, s->sql, 0, NULL), PGRES_COMMAND_OK))
			return 0;
	return 1;
}

static void *
client_main(void *arg)
{
	Client	   *c = arg;
	PGconn	   *conn = PQconnectdb(pgconn);
	int			fd = -1;
	double		end;

	if (PQstatus(conn) != CONNECTION_OK)
	{
		c->failed = "could not connect to PostgreSQL";
		return NULL;
	}
	if (mode == ROUTE_SEED)
	{
		fd = redis_connect();
		if (fd < 0)
		{
			c->failed = "could not connect to Redis";
			return NULL;
		}
	}
	if (!prepare_all(conn, mode == ROUTE_SEED ? seed_stmts :
					 mode == ROUTE_FLOOR ? floor_stmts : ours_stmts))
	{
		c->failed = "could not prepare the route's statements";
		return NULL;
	}

	end = now_s() + seconds;
	while (now_s() < end)
	{
		char		user[128];
		const char *p[2];
		PGresult   *r;

		snprintf(user, sizeof(user), "%s%d", prefix, 1 + (int) (rand_r(&c->rnd) % users));
		p[0] = user;
		if (mode == ROUTE_SEED)
		{
			char		key[160];
			long		n;

			snprintf(key, sizeof(key), "ai:burst:%s", user);
			if (redis_incr_expire(fd, key, &n) != 0)
			{
				c->failed = "Redis did not answer";
				break;
			}
			if (!ok(PQexecPrepared(conn, "count", 1, p, NULL, NULL, 0), PGRES_TUPLES_OK) ||
				!ok(PQexecPrepared(conn, "sum", 1, p, NULL, NULL, 0), PGRES_TUPLES_OK) ||
				!ok(PQexecPrepared(conn, "insert", 1, p, NULL, NULL, 0), PGRES_COMMAND_OK))
			{
				c->failed = "a statement of the seed's route failed";
				break;
			}
		}
		else
		{
			char		id[32];

			r = PQexecPrepared(conn, "check", 1, p, NULL, NULL, 0);
			if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQgetisnull(r, 0, 0))
			{
				fprintf(stderr, "route: the check was refused or failed: %s", PQresultErrorMessage(r));
				PQclear(r);
				c->failed = "the route's check did not allow the call";
				break;
			}
			snprintf(id, sizeof(id), "%s", PQgetvalue(r, 0, 0));
			PQclear(r);
			p[1] = id;
			if (!ok(PQexecPrepared(conn, "record", 2, p, NULL, NULL, 0),
					mode == ROUTE_FLOOR ? PGRES_COMMAND_OK : PGRES_TUPLES_OK))
			{
				c->failed = "the route's record failed";
				break;
			}
		}
		c->routes++;
	}
	if (fd >= 0)
		close(fd);
	PQfinish(conn);
	return NULL;
}

static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a,
				y = *(const double *) b;

	return (x > y) - (x < y);
}

static double
median_ms(double *ms, int n)
{
	qsort(ms, n, sizeof(double), cmp_double);
	return n % 2 ? ms[n / 2] : (ms[n / 2 - 1] + ms[n / 2]) / 2;
}

/*
 * Each user's first budget check, timed, the users of prefix and prefix_b
 * alternating; prints the median of each in ms.
 */
static int
first_checks(const char *prefix_b)
{
	PGconn	   *conn = PQconnectdb(pgconn);
	double	   *ms[2] = {malloc(sizeof(double) * users), malloc(sizeof(double) * users)};
	const char *prefixes[2] = {prefix, prefix_b};

	if (PQstatus(conn) != CONNECTION_OK || ms[0] == NULL || ms[1] == NULL)
	{
		fprintf(stderr, "route: could not connect to PostgreSQL\n");
		return 1;
	}
	if (!ok(PQprepare(conn, "check",
					  "SELECT reservation_id FROM ai_check_limit($1, 'route', 2)", 0, NULL),
			PGRES_COMMAND_OK))
		return 1;
	for (int i = 0; i < users; i++)
	{
		for (int k = 0; k < 2; k++)
		{
			char		user[128];
			char		id[32];
			const char *p[1] = {user};
			const char *pid[1] = {id};
			double		t0;
			PGresult   *r;

			snprintf(user, sizeof(user), "%s%d", prefixes[k], i + 1);
			t0 = now_s();
			r = PQexecPrepared(conn, "check", 1, p, NULL, NULL, 0);
			ms[k][i] = (now_s() - t0) * 1000;
			if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQgetisnull(r, 0, 0))
			{
				fprintf(stderr, "route: the first check was refused or failed: %s", PQresultErrorMessage(r));
				return 1;
			}
			/* give the estimate back: the next run starts from the same spend */
			snprintf(id, sizeof(id), "%s", PQgetvalue(r, 0, 0));
			PQclear(r);
			if (!ok(PQexecParams(conn, "SELECT ai_release_reservation($1::bigint)", 1, NULL,
								 pid, NULL, NULL, 0), PGRES_TUPLES_OK))
				return 1;
		}
	}
	printf("%.3f %.3f\n", median_ms(ms[0], users), median_ms(ms[1], users));
	PQfinish(conn);
	return 0;
}

int
main(int argc, char **argv)
{
	int			nclients;
	Client	   *clients;
	long		total = 0;
	double		t0;

	if (argc == 6 && strcmp(argv[1], "first") == 0)
	{
		users = atoi(argv[2]);
		prefix = argv[3];
		pgconn = argv[5];
		return users > 0 ? first_checks(argv[4]) : 2;
	}
	if (argc == 8 && strcmp(argv[1], "seed") == 0)
		mode = ROUTE_SEED;
	else if (argc == 7 && strcmp(argv[1], "ours") == 0)
		mode = ROUTE_OURS;
	else if (argc == 7 && strcmp(argv[1], "floor") == 0)
		mode = ROUTE_FLOOR;
	else
	{
		fprintf(stderr, "usage: route seed SECONDS CLIENTS USERS PREFIX PGCONN REDIS_SOCKET\n"
				"       route ours|floor SECONDS CLIENTS USERS PREFIX PGCONN\n"
				"       route first USERS PREFIX_A PREFIX_B PGCONN\n");
		return 2;
	}
	seconds = atoi(argv[2]);
	nclients = atoi(argv[3]);
	users = atoi(argv[4]);
	prefix = argv[5];
	pgconn = argv[6];
	redis_path = mode == ROUTE_SEED ? argv[7] : NULL;
	if (seconds <= 0 || nclients <= 0 || users <= 0)
		return 2;
	clients = calloc(nclients, sizeof(Client));
	t0 = now_s();
	for (int i = 0; i < nclients; i++)
	{
		clients[i].rnd = 12345u + (unsigned) i * 7919u;
		pthread_create(&clients[i].thread, NULL, client_main, &clients[i]);
	}
	for (int i = 0; i < nclients; i++)
	{
		pthread_join(clients[i].thread, NULL);
		if (clients[i].failed)
		{
			fprintf(stderr, "route: %s\n", clients[i].failed);
			return 1;
		}
		total += clients[i].routes;
	}
	printf("%.0f\n", total / (now_s() - t0));
	return 0;
}
