// The lease-race rig's racers (see run.sh): open random files of a directory for writing, as fast as they can,
// and write only when the open returned an inode that has no name (nlink 0):
// a write sharelink's delete must notice and put back. Opens that find the
// file named write nothing (the file stays unchanged, so deletable).
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
static const char *dir; static int nfiles, ms, trunc_; static FILE *logf;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static long opens;
static long now_ms(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1000+t.tv_nsec/1000000;}
static void *run(void *arg){
  long tid=(long)arg; unsigned seed=tid*7919+getpid(); long end=now_ms()+ms; long seq=0, n=0;
  char path[4096], line[128];
  while(now_ms()<end){
    int i=rand_r(&seed)%nfiles; seq++;
    snprintf(path,sizeof path,"%s/f%d",dir,i);
    struct timespec t0,t1; clock_gettime(CLOCK_MONOTONIC,&t0);
    int fd=open(path,O_WRONLY|O_APPEND|O_CLOEXEC);
    clock_gettime(CLOCK_MONOTONIC,&t1);
    long open_us=(t1.tv_sec-t0.tv_sec)*1000000+(t1.tv_nsec-t0.tv_nsec)/1000;
    if(fd<0) continue;
    n++;
    struct stat a; fstat(fd,&a);
    if(a.st_nlink==0){
      int k=snprintf(line,sizeof line,"orphan t%ld-s%ld\n",tid,seq);
      int ok=write(fd,line,k)==k;
      pthread_mutex_lock(&mu);fprintf(logf,"f%d orphan t%ld-s%ld ok=%d ino=%lu open_us=%ld\n",i,tid,seq,ok,(unsigned long)a.st_ino,open_us);fflush(logf);pthread_mutex_unlock(&mu);
    }
    close(fd);
  }
  __sync_fetch_and_add(&opens,n);
  return 0;
}
int main(int c,char**v){
  dir=v[1]; nfiles=atoi(v[2]); int nt=atoi(v[3]); ms=atoi(v[4]); logf=fopen(v[5],"w");
  pthread_t t[256]; for(long k=0;k<nt;k++) pthread_create(&t[k],0,run,(void*)k);
  for(int k=0;k<nt;k++) pthread_join(t[k],0); fprintf(logf,"opens %ld\n",opens); fclose(logf); return 0;
}
